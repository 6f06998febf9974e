#include "daemon/optimizer_pools.h"

#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <numeric>

#include "core/status.h"

namespace strata::daemon {

std::vector<PoolPlan> plan_pools(const Topology& topo, int threads) {
  std::vector<const NumaNode*> nodes;
  for (const NumaNode& n : topo.numa_nodes) {
    if (!n.cpus.empty()) nodes.push_back(&n);
  }
  if (nodes.size() <= 1) {
    PoolPlan p;
    if (!nodes.empty()) {
      p.node = nodes[0]->os_index;
      p.cpus = nodes[0]->cpus;
    }
    p.threads = threads > 0 ? threads : std::max<int>(1, static_cast<int>(p.cpus.size()));
    if (p.cpus.empty() && threads <= 0) p.threads = std::max(1, topo.pus);
    return {p};
  }
  int total_cpus = 0;
  for (const NumaNode* n : nodes) total_cpus += static_cast<int>(n->cpus.size());
  const int want = threads > 0 ? threads : total_cpus;
  std::vector<PoolPlan> plans;
  if (want < static_cast<int>(nodes.size())) {
    for (int i = 0; i < want; ++i) plans.push_back({nodes[i]->os_index, nodes[i]->cpus, 1});
    return plans;
  }
  // Proportional to CPUs, at least one each; the remainder goes to the
  // nodes with the largest fractional share (largest remainder method).
  std::vector<double> exact;
  int given = 0;
  for (const NumaNode* n : nodes) {
    const double e = double(want) * double(n->cpus.size()) / double(total_cpus);
    const int t = std::max(1, static_cast<int>(e));
    exact.push_back(e - t);
    plans.push_back({n->os_index, n->cpus, t});
    given += t;
  }
  std::vector<size_t> order(plans.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return exact[a] > exact[b]; });
  for (size_t k = 0; given < want; k = (k + 1) % order.size(), ++given) ++plans[order[k]].threads;
  return plans;
}

OptimizerPools::OptimizerPools(const Topology& topo, int threads) {
  const std::vector<PoolPlan> plans = plan_pools(topo, threads);
  for (const PoolPlan& p : plans) {
    auto pool = std::make_unique<OptimizerPool>();
    pool->plan = p;
    if (plans.size() > 1) {
      tbb::task_arena::constraints c;
      c.numa_id = p.node;
      c.max_concurrency = p.threads;
      pool->arena = std::make_unique<tbb::task_arena>(c);
    } else {
      pool->arena = std::make_unique<tbb::task_arena>(p.threads);
    }
    pools_.push_back(std::move(pool));
  }
}

int OptimizerPools::pick() {
  std::lock_guard<std::mutex> lock(mu_);
  int best = 0;
  for (int i = 1; i < size(); ++i) {
    if (pools_[i]->sessions < pools_[best]->sessions) best = i;
  }
  ++pools_[best]->sessions;
  return best;
}

void OptimizerPools::release(int i) {
  std::lock_guard<std::mutex> lock(mu_);
  if (i >= 0 && i < size() && pools_[i]->sessions > 0) --pools_[i]->sessions;
}

absl::Status bind_to_node(void* addr, uint64_t bytes, int node) {
  if (node < 0 || node >= 1024 || bytes == 0) return absl::OkStatus();
  constexpr int kPreferred = 1;  // MPOL_PREFERRED (linux/mempolicy.h)
  unsigned long mask[1024 / (8 * sizeof(unsigned long))] = {};
  mask[node / (8 * sizeof(unsigned long))] |= 1ul << (node % (8 * sizeof(unsigned long)));
  const long rc = ::syscall(SYS_mbind, addr, bytes, kPreferred, mask, 1024, 0);
  if (rc == 0 || errno == ENOSYS || errno == EPERM) return absl::OkStatus();
  return errno_status(errno, "mbind of a session arena to NUMA node " + std::to_string(node));
}

}  // namespace strata::daemon

// The hwloc view must be self-consistent on whatever machine runs it; it
// must not assume a GPU, NVMe or PCI information exists.
#include "core/topology.h"

#include <unistd.h>

#include <cstdio>
#include <set>

#include "gtest/gtest.h"

namespace strata {
namespace {

class TopologyTest : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::StatusOr<Topology> t = discover_topology();
    ASSERT_TRUE(t.ok()) << t.status();
    topo_ = *std::move(t);
  }
  Topology topo_;
};

TEST_F(TopologyTest, CountsAreOrdered) {
  EXPECT_GE(topo_.packages, 1);
  EXPECT_GE(topo_.cores, topo_.packages);
  EXPECT_GE(topo_.pus, topo_.cores);
  EXPECT_LE(topo_.pus, sysconf(_SC_NPROCESSORS_CONF));
}

TEST_F(TopologyTest, NumaNodesPartitionThePus) {
  ASSERT_FALSE(topo_.numa_nodes.empty());
  std::set<int> seen_nodes;
  std::set<int> seen_cpus;
  uint64_t memory = 0;
  size_t cpu_count = 0;
  for (const NumaNode& n : topo_.numa_nodes) {
    EXPECT_TRUE(seen_nodes.insert(n.os_index).second) << "node " << n.os_index << " twice";
    EXPECT_GT(n.memory_bytes, 0u) << "node " << n.os_index;
    for (int cpu : n.cpus) {
      EXPECT_GE(cpu, 0);
      seen_cpus.insert(cpu);
    }
    cpu_count += n.cpus.size();
    memory += n.memory_bytes;
  }
  // Each PU belongs to exactly one node (CPU-less memory nodes add none).
  EXPECT_EQ(cpu_count, seen_cpus.size());
  EXPECT_EQ(static_cast<int>(seen_cpus.size()), topo_.pus);
  EXPECT_EQ(memory, topo_.total_memory_bytes);
}

TEST_F(TopologyTest, NodeMemoryMatchesTheKernel) {
  // The node's MemTotal in sysfs is the same number hwloc reads.
  for (const NumaNode& n : topo_.numa_nodes) {
    std::string path = "/sys/devices/system/node/node" + std::to_string(n.os_index) + "/meminfo";
    FILE* f = std::fopen(path.c_str(), "r");
    if (f == nullptr) GTEST_SKIP() << "no " << path << " on this machine";
    char line[256];
    unsigned long long kib = 0;
    while (std::fgets(line, sizeof line, f) != nullptr) {
      int node = 0;
      if (std::sscanf(line, "Node %d MemTotal: %llu kB", &node, &kib) == 2) break;
    }
    std::fclose(f);
    ASSERT_GT(kib, 0u) << path;
    EXPECT_EQ(n.memory_bytes, kib * 1024) << "node " << n.os_index;
  }
}

TEST_F(TopologyTest, CachesAreSane) {
  for (const CacheLevel& c : topo_.caches) {
    EXPECT_GE(c.level, 1);
    EXPECT_LE(c.level, 4);
    EXPECT_TRUE(c.kind == "data" || c.kind == "instruction" || c.kind == "unified") << c.kind;
    EXPECT_GT(c.size_bytes, 0u);
    EXPECT_GE(c.count, 1);
    // No more instances of one cache than there are PUs to use it.
    EXPECT_LE(c.count, topo_.pus);
  }
  for (size_t i = 1; i < topo_.caches.size(); ++i) {
    EXPECT_LE(topo_.caches[i - 1].level, topo_.caches[i].level);
  }
}

TEST_F(TopologyTest, PciDevicesAreGpusOrNvmeWithKnownNodes) {
  std::set<int> nodes;
  for (const NumaNode& n : topo_.numa_nodes) nodes.insert(n.os_index);
  std::set<std::string> bus_ids;
  for (const PciDevice& p : topo_.pci_devices) {
    unsigned d, b, s, f;
    char extra;
    EXPECT_EQ(std::sscanf(p.bus_id.c_str(), "%4x:%2x:%2x.%1x%c", &d, &b, &s, &f, &extra), 4)
        << p.bus_id;
    EXPECT_EQ(p.bus_id.size(), 12u) << p.bus_id;
    EXPECT_TRUE(bus_ids.insert(p.bus_id).second) << p.bus_id << " twice";
    if (p.kind == PciKind::kGpu) {
      EXPECT_EQ(p.vendor_id, 0x10de);
      EXPECT_EQ(p.class_id >> 8, 0x03);
    } else {
      EXPECT_EQ(p.class_id, 0x0108);
    }
    if (p.numa_node >= 0) {
      EXPECT_TRUE(nodes.count(p.numa_node)) << p.bus_id;
    }
  }
}

TEST(PciKindTest, Names) {
  EXPECT_EQ(pci_kind_name(PciKind::kGpu), "gpu");
  EXPECT_EQ(pci_kind_name(PciKind::kNvme), "nvme");
}

}  // namespace
}  // namespace strata

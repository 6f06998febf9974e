// The machine's shape as hwloc sees it: NUMA nodes, cores, caches, and the
// PCI devices strata cares about (GPUs and NVMe controllers) with the NUMA
// node each hangs off.
//
// discover_topology() loads a fresh hwloc topology (with I/O device
// discovery on) and copies what strata needs into plain values, so the result
// can be kept, copied and read from any thread without hwloc. It only sees
// the CPUs and memory this process is allowed to use (cgroup cpusets). On a
// VM or container without PCI information the device list is simply empty.
// It fails only when hwloc itself cannot build a topology.
//
//   STRATA_ASSIGN_OR_RETURN(Topology topo, discover_topology());
//   for (const NumaNode& n : topo.numa_nodes) pin_workers(n.cpus);
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace strata {

struct NumaNode {
  int os_index = 0;           // the kernel's node number (node0, node1, ...)
  uint64_t memory_bytes = 0;  // local memory of this node
  std::vector<int> cpus;      // OS indices of the PUs (logical CPUs) near it
};

// One cache level and kind, e.g. 48 KiB L1d, present `count` times.
struct CacheLevel {
  int level = 0;            // 1, 2, 3
  std::string kind;         // "data", "instruction" or "unified"
  uint64_t size_bytes = 0;  // per instance
  int count = 0;            // instances in the allowed topology
};

enum class PciKind { kGpu, kNvme };

struct PciDevice {
  PciKind kind = PciKind::kGpu;
  std::string bus_id;  // "0000:65:00.0", same format as CudaDeviceInfo::pci_bus_id
  uint16_t vendor_id = 0;
  uint16_t device_id = 0;
  uint16_t class_id = 0;                // class and subclass, e.g. 0x0302, 0x0108
  int numa_node = -1;                   // os_index of the nearest NUMA node; -1 when not known
  std::vector<std::string> os_devices;  // kernel names hwloc found, e.g. "nvme0n1"
};

struct Topology {
  int packages = 0;
  int cores = 0;                    // physical cores
  int pus = 0;                      // logical CPUs (hardware threads)
  uint64_t total_memory_bytes = 0;  // sum over numa_nodes
  std::vector<NumaNode> numa_nodes;
  std::vector<CacheLevel> caches;      // ordered by level, then kind
  std::vector<PciDevice> pci_devices;  // NVIDIA GPUs and NVMe controllers
};

// Builds the view; errors name the hwloc call that failed.
absl::StatusOr<Topology> discover_topology();

std::string_view pci_kind_name(PciKind kind);  // "gpu", "nvme"

}  // namespace strata

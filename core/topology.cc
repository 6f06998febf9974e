#include "core/topology.h"

#include <hwloc.h>

#include <algorithm>
#include <cerrno>
#include <memory>
#include <tuple>

#include "absl/strings/str_format.h"
#include "core/status.h"

namespace strata {
namespace {

constexpr uint16_t kNvidiaVendorId = 0x10de;
constexpr uint16_t kNvmeClassId = 0x0108;     // mass storage / non-volatile memory
constexpr uint16_t kDisplayClassBase = 0x03;  // VGA, 3D controller, ...

struct TopologyDeleter {
  void operator()(hwloc_topology* t) const { hwloc_topology_destroy(t); }
};
using TopologyPtr = std::unique_ptr<hwloc_topology, TopologyDeleter>;

std::vector<int> bitmap_indices(hwloc_const_bitmap_t set) {
  std::vector<int> out;
  if (set == nullptr) return out;
  unsigned i;
  hwloc_bitmap_foreach_begin(i, set) { out.push_back(static_cast<int>(i)); }
  hwloc_bitmap_foreach_end();
  return out;
}

int count_type(hwloc_topology_t topo, hwloc_obj_type_t type) {
  int n = hwloc_get_nbobjs_by_type(topo, type);
  return n < 0 ? 0 : n;
}

std::string_view cache_kind(hwloc_obj_cache_type_t t) {
  switch (t) {
    case HWLOC_OBJ_CACHE_DATA:
      return "data";
    case HWLOC_OBJ_CACHE_INSTRUCTION:
      return "instruction";
    default:
      return "unified";
  }
}

std::vector<CacheLevel> collect_caches(hwloc_topology_t topo) {
  std::vector<CacheLevel> out;
  const hwloc_obj_type_t types[] = {HWLOC_OBJ_L1CACHE, HWLOC_OBJ_L1ICACHE, HWLOC_OBJ_L2CACHE,
                                    HWLOC_OBJ_L3CACHE, HWLOC_OBJ_L4CACHE};
  for (hwloc_obj_type_t type : types) {
    for (hwloc_obj_t obj = hwloc_get_next_obj_by_type(topo, type, nullptr); obj != nullptr;
         obj = hwloc_get_next_obj_by_type(topo, type, obj)) {
      const auto& attr = obj->attr->cache;
      std::string kind(cache_kind(attr.type));
      auto it = std::find_if(out.begin(), out.end(), [&](const CacheLevel& c) {
        return c.level == static_cast<int>(attr.depth) && c.kind == kind &&
               c.size_bytes == attr.size;
      });
      if (it == out.end()) {
        out.push_back({static_cast<int>(attr.depth), kind, attr.size, 1});
      } else {
        ++it->count;
      }
    }
  }
  std::sort(out.begin(), out.end(), [](const CacheLevel& a, const CacheLevel& b) {
    return std::tie(a.level, a.kind, a.size_bytes) < std::tie(b.level, b.kind, b.size_bytes);
  });
  return out;
}

// The NUMA node a PCI device is attached to: the nodeset of its first
// non-I/O ancestor, when that names exactly one node.
int pci_numa_node(hwloc_topology_t topo, hwloc_obj_t pci) {
  hwloc_obj_t anc = hwloc_get_non_io_ancestor_obj(topo, pci);
  if (anc == nullptr || anc->nodeset == nullptr) return -1;
  if (hwloc_bitmap_weight(anc->nodeset) != 1) return -1;
  return hwloc_bitmap_first(anc->nodeset);
}

std::vector<PciDevice> collect_pci(hwloc_topology_t topo) {
  std::vector<PciDevice> out;
  for (hwloc_obj_t obj = hwloc_get_next_pcidev(topo, nullptr); obj != nullptr;
       obj = hwloc_get_next_pcidev(topo, obj)) {
    const auto& p = obj->attr->pcidev;
    PciDevice dev;
    // NVIDIA also makes bridges and HDMI audio functions; only display-class
    // functions are GPUs.
    if (p.vendor_id == kNvidiaVendorId && (p.class_id >> 8) == kDisplayClassBase) {
      dev.kind = PciKind::kGpu;
    } else if (p.class_id == kNvmeClassId) {
      dev.kind = PciKind::kNvme;
    } else {
      continue;
    }
    dev.bus_id = absl::StrFormat("%04x:%02x:%02x.%x", p.domain, p.bus, p.dev, p.func);
    dev.vendor_id = p.vendor_id;
    dev.device_id = p.device_id;
    dev.class_id = p.class_id;
    dev.numa_node = pci_numa_node(topo, obj);
    for (hwloc_obj_t child = obj->io_first_child; child != nullptr; child = child->next_sibling) {
      if (child->type == HWLOC_OBJ_OS_DEVICE && child->name != nullptr) {
        dev.os_devices.emplace_back(child->name);
      }
    }
    out.push_back(std::move(dev));
  }
  return out;
}

}  // namespace

std::string_view pci_kind_name(PciKind kind) { return kind == PciKind::kGpu ? "gpu" : "nvme"; }

absl::StatusOr<Topology> discover_topology() {
  hwloc_topology_t raw = nullptr;
  if (hwloc_topology_init(&raw) != 0) {
    return errno_status(errno, "hwloc_topology_init");
  }
  TopologyPtr topo(raw);
  // I/O objects are off by default; KEEP_IMPORTANT keeps GPUs and storage
  // controllers without every bridge on the bus.
  if (hwloc_topology_set_io_types_filter(raw, HWLOC_TYPE_FILTER_KEEP_IMPORTANT) != 0) {
    return errno_status(errno, "hwloc_topology_set_io_types_filter");
  }
  // On Linux the sysfs-based backend finds the same PCI devices as the
  // libpciaccess plugin, without loading that plugin (which also leaks a few
  // allocations per load under LeakSanitizer). Failure only means the plugin
  // stays on.
  hwloc_topology_set_components(raw, HWLOC_TOPOLOGY_COMPONENTS_FLAG_BLACKLIST, "pci");
  if (hwloc_topology_load(raw) != 0) {
    return errno_status(errno, "hwloc_topology_load (set HWLOC_DEBUG_VERBOSE=1 for details)");
  }

  Topology out;
  out.packages = count_type(raw, HWLOC_OBJ_PACKAGE);
  out.cores = count_type(raw, HWLOC_OBJ_CORE);
  out.pus = count_type(raw, HWLOC_OBJ_PU);
  for (hwloc_obj_t node = hwloc_get_next_obj_by_type(raw, HWLOC_OBJ_NUMANODE, nullptr);
       node != nullptr; node = hwloc_get_next_obj_by_type(raw, HWLOC_OBJ_NUMANODE, node)) {
    NumaNode n;
    n.os_index = static_cast<int>(node->os_index);
    n.memory_bytes = node->attr->numanode.local_memory;
    n.cpus = bitmap_indices(node->cpuset);
    out.total_memory_bytes += n.memory_bytes;
    out.numa_nodes.push_back(std::move(n));
  }
  out.caches = collect_caches(raw);
  out.pci_devices = collect_pci(raw);
  return out;
}

}  // namespace strata

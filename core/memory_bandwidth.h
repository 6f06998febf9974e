// DRAM bandwidth probe: the roofline the CPU optimizer is measured against.
//
// Three STREAM-style kernels, each run over arrays far larger than the
// last-level cache, on `threads` threads (oneTBB arena, static partition, so
// each thread touches the pages it first-touched, i.e. NUMA-local memory):
//   copy   b[i] = a[i]                                   8 B per element
//   triad  a[i] = b[i] + s * c[i]                        12 B per element
//   adam   the CPU-Adam traffic pattern: read fp32 p, m, v and a 16-bit
//          grad; write p, m, v and a 16-bit copy of p    28 B per element
// Bytes are counted as STREAM does (what the kernel reads plus what it
// writes; write-allocate traffic is not added). The best of `repeats` runs
// is reported. Not thread-safe with itself (it uses the whole machine).
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace strata {

struct MemoryBandwidthOptions {
  size_t elements = size_t{32} << 20;  // per array; 32M -> 896 MiB for adam
  int threads = 0;                     // 0: every core the process may use
  int repeats = 5;
};

struct BandwidthResult {
  std::string kernel;        // "copy", "triad", "adam"
  size_t bytes_per_element;  // counted traffic
  size_t elements;
  int threads;
  double best_seconds;
  double gb_per_s;  // 1e9 bytes per second, best run
};

absl::StatusOr<std::vector<BandwidthResult>> measure_memory_bandwidth(
    const MemoryBandwidthOptions& options);

// Runs only the Adam-like stream (28 B per element); what cpu_adam compares against.
absl::StatusOr<BandwidthResult> measure_adam_stream(const MemoryBandwidthOptions& options);

}  // namespace strata

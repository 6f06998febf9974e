#include "core/memory_bandwidth.h"

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <limits>
#include <memory>

#include "absl/strings/str_cat.h"
#include "core/trace.h"
#include "oneapi/tbb/blocked_range.h"
#include "oneapi/tbb/info.h"
#include "oneapi/tbb/parallel_for.h"
#include "oneapi/tbb/partitioner.h"
#include "oneapi/tbb/task_arena.h"

namespace strata {
namespace {

// Each kernel is cloned per ISA and the best clone is picked at load time,
// so the probe streams with the widest vectors the CPU has, as CPU-Adam does.
#define STRATA_STREAM_KERNEL __attribute__((target_clones("avx512f", "avx2", "default")))

STRATA_STREAM_KERNEL void copy_kernel(const float* __restrict a, float* __restrict b, size_t n) {
  for (size_t i = 0; i < n; ++i) b[i] = a[i];
}

STRATA_STREAM_KERNEL void triad_kernel(float* __restrict a, const float* __restrict b,
                                       const float* __restrict c, float s, size_t n) {
  for (size_t i = 0; i < n; ++i) a[i] = b[i] + s * c[i];
}

// Same loads and stores as a fused Adam step with fp16 grads and an fp16
// copy-out; the arithmetic is cheap on purpose (this measures memory).
STRATA_STREAM_KERNEL void adam_kernel(float* __restrict p, float* __restrict m, float* __restrict v,
                                      const uint16_t* __restrict g, uint16_t* __restrict out,
                                      size_t n) {
  for (size_t i = 0; i < n; ++i) {
    float gi = static_cast<float>(g[i]) * 1e-6f;
    float mi = 0.9f * m[i] + gi;
    float vi = 0.999f * v[i] + gi * gi;
    float pi = p[i] - 1e-3f * mi / (vi + 1.0f);
    m[i] = mi;
    v[i] = vi;
    p[i] = pi;
    uint32_t bits;
    __builtin_memcpy(&bits, &pi, 4);
    out[i] = static_cast<uint16_t>(bits >> 16);
  }
}

struct FreeDeleter {
  void operator()(void* p) const { std::free(p); }
};
template <typename T>
using Buffer = std::unique_ptr<T[], FreeDeleter>;

template <typename T>
absl::StatusOr<Buffer<T>> allocate(size_t n) {
  size_t bytes = (n * sizeof(T) + 4095) & ~size_t{4095};
  void* p = std::aligned_alloc(4096, bytes);
  if (p == nullptr) {
    return absl::ResourceExhaustedError(absl::StrCat("memory bandwidth probe could not allocate ",
                                                     bytes >> 20, " MiB; pass fewer elements"));
  }
  return Buffer<T>(static_cast<T*>(p));
}

// Runs body(begin, end) over [0, n) split evenly across the arena's threads;
// the static partitioner gives each thread the same range on every call,
// which keeps first-touched pages local to it.
void parallel_ranges(tbb::task_arena& arena, size_t n,
                     const std::function<void(size_t, size_t)>& body) {
  arena.execute([&] {
    const size_t grain = 1 << 14;
    tbb::parallel_for(
        tbb::blocked_range<size_t>(0, n, grain),
        [&](const tbb::blocked_range<size_t>& r) { body(r.begin(), r.end()); },
        tbb::static_partitioner());
  });
}

double time_best(int repeats, const std::function<void()>& run) {
  run();  // warm-up: page faults and frequency ramp are not bandwidth
  double best = std::numeric_limits<double>::infinity();
  for (int i = 0; i < repeats; ++i) {
    int64_t t0 = monotonic_ns();
    run();
    best = std::min(best, (monotonic_ns() - t0) * 1e-9);
  }
  return best;
}

absl::Status check_options(const MemoryBandwidthOptions& o) {
  if (o.elements < (1 << 16)) {
    return absl::InvalidArgumentError(
        absl::StrCat("memory bandwidth probe needs at least 65536 elements, got ", o.elements));
  }
  if (o.repeats < 1) return absl::InvalidArgumentError("memory bandwidth probe needs repeats >= 1");
  if (o.threads < 0) return absl::InvalidArgumentError("threads must be >= 0 (0 means all cores)");
  return absl::OkStatus();
}

int resolve_threads(int threads) {
  return threads > 0 ? threads : tbb::info::default_concurrency();
}

BandwidthResult make_result(std::string kernel, size_t bytes_per_element, size_t n, int threads,
                            double seconds) {
  return BandwidthResult{std::move(kernel),
                         bytes_per_element,
                         n,
                         threads,
                         seconds,
                         static_cast<double>(bytes_per_element) * n / seconds / 1e9};
}

}  // namespace

absl::StatusOr<BandwidthResult> measure_adam_stream(const MemoryBandwidthOptions& options) {
  if (absl::Status s = check_options(options); !s.ok()) return s;
  const size_t n = options.elements;
  const int threads = resolve_threads(options.threads);
  tbb::task_arena arena(threads);
  auto p = allocate<float>(n), m = allocate<float>(n), v = allocate<float>(n);
  auto g = allocate<uint16_t>(n), out = allocate<uint16_t>(n);
  for (auto* s : {&p.status(), &m.status(), &v.status(), &g.status(), &out.status()}) {
    if (!s->ok()) return *s;
  }
  parallel_ranges(arena, n, [&](size_t b, size_t e) {
    for (size_t i = b; i < e; ++i) {
      (*p)[i] = 1.0f;
      (*m)[i] = 0.0f;
      (*v)[i] = 0.0f;
      (*g)[i] = static_cast<uint16_t>(i);
      (*out)[i] = 0;
    }
  });
  double secs = time_best(options.repeats, [&] {
    parallel_ranges(arena, n, [&](size_t b, size_t e) {
      adam_kernel(p->get() + b, m->get() + b, v->get() + b, g->get() + b, out->get() + b, e - b);
    });
  });
  return make_result("adam", 28, n, threads, secs);
}

absl::StatusOr<std::vector<BandwidthResult>> measure_memory_bandwidth(
    const MemoryBandwidthOptions& options) {
  if (absl::Status s = check_options(options); !s.ok()) return s;
  const size_t n = options.elements;
  const int threads = resolve_threads(options.threads);
  std::vector<BandwidthResult> results;
  {
    tbb::task_arena arena(threads);
    auto a = allocate<float>(n), b = allocate<float>(n), c = allocate<float>(n);
    for (auto* s : {&a.status(), &b.status(), &c.status()}) {
      if (!s->ok()) return *s;
    }
    parallel_ranges(arena, n, [&](size_t lo, size_t hi) {
      for (size_t i = lo; i < hi; ++i) {
        (*a)[i] = 1.0f;
        (*b)[i] = 2.0f;
        (*c)[i] = 0.5f;
      }
    });
    double copy = time_best(options.repeats, [&] {
      parallel_ranges(arena, n, [&](size_t lo, size_t hi) {
        copy_kernel(a->get() + lo, b->get() + lo, hi - lo);
      });
    });
    results.push_back(make_result("copy", 8, n, threads, copy));
    double triad = time_best(options.repeats, [&] {
      parallel_ranges(arena, n, [&](size_t lo, size_t hi) {
        triad_kernel(a->get() + lo, b->get() + lo, c->get() + lo, 3.0f, hi - lo);
      });
    });
    results.push_back(make_result("triad", 12, n, threads, triad));
  }
  auto adam = measure_adam_stream(options);
  if (!adam.ok()) return adam.status();
  results.push_back(*adam);
  return results;
}

}  // namespace strata

#include "offload/store_benchmark.h"

#include <algorithm>
#include <condition_variable>
#include <deque>
#include <filesystem>
#include <mutex>
#include <thread>

#include "absl/strings/str_cat.h"
#include "core/status.h"
#include "gpu/sim_device.h"
#include "offload/busy_io_engine.h"
#include "offload/tiered_store.h"
#include "swap/io_bench.h"
#include "swap/io_engine.h"

namespace strata::offload {
namespace {

struct Layer {
  TensorId param, grad, master, exp_avg, exp_avg_sq;
};

// Layers finished by backward, waiting for the optimizer thread.
class LayerQueue {
 public:
  void push(int layer) {
    std::lock_guard lock(mu_);
    q_.push_back(layer);
    cv_.notify_one();
  }
  int pop() {  // -1: end of step
    std::unique_lock lock(mu_);
    cv_.wait(lock, [&] { return !q_.empty(); });
    int l = q_.front();
    q_.pop_front();
    return l;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<int> q_;
};

absl::Status compute_pass(TieredStore& store, gpu::SimDevice& dev, gpu::StreamId stream,
                          const std::vector<Layer>& layers, const StoreBenchmarkOptions& o,
                          LayerQueue& done) {
  for (const Layer& l : layers) {
    STRATA_RETURN_IF_ERROR(store.acquire(l.param, Tier::kDevice, Access::kRead).status());
    STRATA_RETURN_IF_ERROR(dev.launch_timed_compute(stream, o.forward_ms_per_layer * 1e-3));
    STRATA_RETURN_IF_ERROR(dev.synchronize_stream(stream));
    STRATA_RETURN_IF_ERROR(store.release(l.param, Tier::kDevice, false));
  }
  for (int i = static_cast<int>(layers.size()) - 1; i >= 0; --i) {
    const Layer& l = layers[i];
    STRATA_RETURN_IF_ERROR(store.acquire(l.param, Tier::kDevice, Access::kRead).status());
    STRATA_RETURN_IF_ERROR(store.acquire(l.grad, Tier::kDevice, Access::kWrite).status());
    STRATA_RETURN_IF_ERROR(dev.launch_timed_compute(stream, o.backward_ms_per_layer * 1e-3));
    STRATA_RETURN_IF_ERROR(dev.synchronize_stream(stream));
    STRATA_RETURN_IF_ERROR(store.release(l.param, Tier::kDevice, false));
    STRATA_RETURN_IF_ERROR(store.release(l.grad, Tier::kDevice, true));
    done.push(i);
  }
  done.push(-1);
  return absl::OkStatus();
}

absl::Status optimizer_pass(TieredStore& store, const std::vector<Layer>& layers,
                            const StoreBenchmarkOptions& o, LayerQueue& done) {
  for (int i = done.pop(); i >= 0; i = done.pop()) {
    const Layer& l = layers[i];
    // The gradient comes down from the device (D2H) on this acquire.
    STRATA_RETURN_IF_ERROR(store.acquire(l.grad, Tier::kHost, Access::kRead).status());
    for (TensorId s : {l.master, l.exp_avg, l.exp_avg_sq}) {
      STRATA_RETURN_IF_ERROR(store.acquire(s, Tier::kHost, Access::kReadWrite).status());
    }
    STRATA_RETURN_IF_ERROR(store.acquire(l.param, Tier::kHost, Access::kWrite).status());
    std::this_thread::sleep_for(std::chrono::duration<double>(o.optimizer_ms_per_layer * 1e-3));
    STRATA_RETURN_IF_ERROR(store.release(l.grad, Tier::kHost, false));
    for (TensorId s : {l.master, l.exp_avg, l.exp_avg_sq}) {
      STRATA_RETURN_IF_ERROR(store.release(s, Tier::kHost, true));
    }
    STRATA_RETURN_IF_ERROR(store.release(l.param, Tier::kHost, true));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<StoreBenchmarkResult> run_store_benchmark(const StoreBenchmarkOptions& o) {
  if (o.layers < 2 || o.steps < 2 || o.layer_param_bytes < 4096 || o.device_layers < 1 ||
      o.host_state_layers < 1) {
    return absl::InvalidArgumentError(
        "store benchmark needs layers >= 2, steps >= 2, layer bytes >= 4096 and budgets of at "
        "least one layer");
  }
  StoreBenchmarkResult result;
  result.options = o;
  const std::string dir = o.nvme_dir + "/strata-bench-store";
  STRATA_ASSIGN_OR_RETURN(swap::SequentialIoReport probe,
                          swap::probe_directory(dir, o.nvme_probe_bytes));
  result.nvme_read_gb_per_s = probe.read->gb_per_s;
  result.nvme_write_gb_per_s = probe.write->gb_per_s;
  swap::IoEngineOptions io_options;
  io_options.queue_depth = 32;
  io_options.allow_buffered = true;
  STRATA_ASSIGN_OR_RETURN(std::unique_ptr<swap::IoEngine> io, swap::make_io_engine(io_options));
  result.io_engine = std::string(io->name());
  // The drive's busy time, not bytes / the probe's rate (page cache and
  // queue depth make that wrong both ways).
  BusyIoEngine busy_io(io.get());

  const uint64_t p = o.layer_param_bytes;
  const uint64_t state = 2 * p;  // fp32 is twice fp16
  gpu::SimDevice dev({.capacity_bytes = uint64_t(o.device_layers + 1) * 2 * p + (64 << 20),
                      .h2d_gb_per_s = o.link_gb_per_s,
                      .d2h_gb_per_s = o.link_gb_per_s,
                      .move_data = false});
  TieredStore::Options so;
  so.device = &dev;
  so.device_budget_bytes = uint64_t(o.device_layers) * 2 * p;
  // Host: every fp16 param and grad (their home) plus a window of NVMe states.
  so.host_budget_bytes = uint64_t(o.layers) * 2 * p + uint64_t(o.host_state_layers) * 3 * state;
  so.io = &busy_io;
  so.swap_paths = {dir + "/states.swp"};
  so.verify_checksums = true;
  so.prefetch_window_bytes = o.prefetch_window_bytes ? o.prefetch_window_bytes : 2 * 3 * state;
  STRATA_ASSIGN_OR_RETURN(std::unique_ptr<TieredStore> store, TieredStore::create(so));

  std::vector<Layer> layers(o.layers);
  for (int i = 0; i < o.layers; ++i) {
    auto reg = [&](const char* what, uint64_t bytes, DType dt, TensorRole role,
                   Tier home) -> absl::StatusOr<TensorId> {
      return store->register_tensor(
          {absl::StrCat("h.", i, ".", what), bytes / dtype_size(dt), dt, role, home});
    };
    STRATA_ASSIGN_OR_RETURN(layers[i].param,
                            reg("param", p, DType::kFloat16, TensorRole::kParam16, Tier::kHost));
    STRATA_ASSIGN_OR_RETURN(layers[i].grad,
                            reg("grad", p, DType::kFloat16, TensorRole::kGrad, Tier::kHost));
    STRATA_ASSIGN_OR_RETURN(layers[i].master, reg("master", state, DType::kFloat32,
                                                  TensorRole::kMaster32, Tier::kNvme));
    STRATA_ASSIGN_OR_RETURN(layers[i].exp_avg, reg("exp_avg", state, DType::kFloat32,
                                                   TensorRole::kExpAvg, Tier::kNvme));
    STRATA_ASSIGN_OR_RETURN(layers[i].exp_avg_sq, reg("exp_avg_sq", state, DType::kFloat32,
                                                      TensorRole::kExpAvgSq, Tier::kNvme));
  }
  STRATA_RETURN_IF_ERROR(store->finalize());
  STRATA_ASSIGN_OR_RETURN(gpu::StreamId stream, dev.create_stream());

  for (int step = 0; step < o.steps; ++step) {
    const StoreStats before = store->stats();
    const IoBusyTimes io_before = busy_io.busy();
    const gpu::DeviceMemoryStats dev_before = dev.stats();
    const int64_t t0 = monotonic_ns();
    store->begin_step();
    LayerQueue done;
    absl::Status compute_status, optimizer_status;
    std::thread optimizer([&] { optimizer_status = optimizer_pass(*store, layers, o, done); });
    compute_status = compute_pass(*store, dev, stream, layers, o, done);
    if (!compute_status.ok()) done.push(-1);
    optimizer.join();
    store->end_step();
    STRATA_RETURN_IF_ERROR(compute_status, "compute thread");
    STRATA_RETURN_IF_ERROR(optimizer_status, "optimizer thread");
    STRATA_RETURN_IF_ERROR(store->background_error(), "prefetch");

    const StoreStats after = store->stats();
    const gpu::DeviceMemoryStats dev_after = dev.stats();
    const auto& dv = after.tiers[0];
    const auto& hv = after.tiers[1];
    const auto& nv = after.tiers[2];
    StoreStepResult r;
    r.step_seconds = (monotonic_ns() - t0) * 1e-9;
    r.compute_seconds = o.layers * (o.forward_ms_per_layer + o.backward_ms_per_layer) * 1e-3;
    r.h2d_seconds = (dev_after.h2d_bytes - dev_before.h2d_bytes) / (o.link_gb_per_s * 1e9);
    r.d2h_seconds = (dev_after.d2h_bytes - dev_before.d2h_bytes) / (o.link_gb_per_s * 1e9);
    const IoBusyTimes io_after = busy_io.busy();
    r.nvme_read_seconds = (io_after.read_ns - io_before.read_ns) * 1e-9;
    r.nvme_write_seconds = (io_after.write_ns - io_before.write_ns) * 1e-9;
    r.nvme_seconds = (io_after.any_ns - io_before.any_ns) * 1e-9;
    r.nvme_read_bytes = nv.bytes_out - before.tiers[2].bytes_out;
    r.nvme_write_bytes = nv.bytes_in - before.tiers[2].bytes_in;
    r.optimizer_seconds = o.layers * o.optimizer_ms_per_layer * 1e-3;
    std::pair<const char*, double> res[] = {
        {"compute", r.compute_seconds},
        {"h2d", r.h2d_seconds},
        {"d2h", r.d2h_seconds},
        {"nvme_read", r.nvme_read_seconds},
        {"nvme_write", r.nvme_write_seconds},
        {"optimizer", r.optimizer_seconds},
        // One drive serves both directions: busy while either is in flight.
        {"nvme", r.nvme_seconds}};
    auto slowest = *std::max_element(std::begin(res), std::end(res),
                                     [](auto& a, auto& b) { return a.second < b.second; });
    r.slowest = slowest.first;
    r.slowest_seconds = slowest.second;
    r.ratio = r.step_seconds / r.slowest_seconds;
    r.device_stall_seconds = (dv.stall_ns - before.tiers[0].stall_ns) * 1e-9;
    r.host_stall_seconds = (hv.stall_ns - before.tiers[1].stall_ns) * 1e-9;
    r.device_hits = dv.hits - before.tiers[0].hits;
    r.device_misses = dv.misses - before.tiers[0].misses;
    r.host_hits = hv.hits - before.tiers[1].hits;
    r.host_misses = hv.misses - before.tiers[1].misses;
    result.steps.push_back(r);
  }
  store.reset();
  io.reset();
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
  return result;
}

}  // namespace strata::offload

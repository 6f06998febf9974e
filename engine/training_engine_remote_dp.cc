// TrainingEngine across data-parallel ranks through remote optimizers
// (stratad's sessions): each rank's session holds only the rank's slice of
// every param (zero_partition.h), so the sessions of a node's ranks together
// hold one copy of the model's host state (issue: one host copy per node).
// The engine keeps every layer whole on its device, as with one rank, and
// does the ranks' part itself: a layer's gradients are summed over the
// ranks in fp32 (reduce_scatter) and the rank's slice of their mean goes to
// its session; finish_step sums the sessions' gradient statistics over the
// ranks between its halves, so every session decides alike; the updated
// slices are all-gathered into the device params.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "core/dtype.h"
#include "core/status.h"
#include "dist/communicator.h"
#include "engine/checkpoint_format.h"
#include "engine/training_engine.h"

namespace strata::engine {

absl::Status TrainingEngine::plan_remote_slices(dist::Communicator* comm,
                                                HostBoundRegistration* reg) {
  if (comm->device_memory()) {
    return absl::InvalidArgumentError(
        "data parallel training through stratad reduces with a host-memory communicator; use "
        "Gloo (the default) rather than NCCL");
  }
  const int world = comm->world_size(), rank = comm->rank();
  rdp_ = std::make_unique<RemoteDp>();
  rdp_->comm = comm;
  std::vector<ParamDesc> slices;
  for (const ParamDesc& d : reg->params) {
    if (d.numel < static_cast<uint64_t>(world)) {
      return absl::InvalidArgumentError(
          absl::StrCat("param ", d.name, " has ", d.numel, " elements, fewer than the ", world,
                       " ranks: each rank's stratad session needs a slice of every param; train "
                       "in-process, or on fewer ranks"));
    }
    const ParamSlice s = partition_slice(d.numel, rank, world);
    rdp_->slice.push_back(s);
    ParamDesc mine = d;
    mine.numel = s.numel;
    slices.push_back(mine);
  }
  reg->params = std::move(slices);
  return absl::OkStatus();
}

absl::Status TrainingEngine::setup_remote_dp() {
  RemoteDp& dp = *rdp_;
  const int world = dp.comm->world_size(), rank = dp.comm->rank();
  // Every rank's session must be new, or every one must continue: a mix
  // would start some slices from the initial values and others not.
  double fresh[2] = {remote_->needs_values() ? 1.0 : 0.0, 1.0};
  STRATA_RETURN_IF_ERROR(dp.comm->all_reduce_host(fresh, dist::ReduceOp::kSum),
                         "agreeing on the ranks' sessions");
  if (fresh[0] != 0 && fresh[0] != fresh[1]) {
    return absl::FailedPreconditionError(absl::StrCat(
        static_cast<int>(fresh[0]), " of ", static_cast<int>(fresh[1]),
        " ranks have a new stratad session and the others continue theirs; end the job's "
        "sessions (strata top --end-session NAME.rankR) or give the run another --session"));
  }
  // Continued sessions must stand at the same step: a rank that died
  // between the halves of a finish left its session a step behind the
  // others', and their slices would no longer be one model's.
  const double steps = static_cast<double>(remote_->steps());
  double range[2] = {steps, -steps};
  STRATA_RETURN_IF_ERROR(dp.comm->all_reduce_host(range, dist::ReduceOp::kMax),
                         "agreeing on the ranks' sessions");
  if (range[0] != -range[1]) {
    return absl::DataLossError(absl::StrCat(
        "the ranks' sessions stopped at different steps (", -range[1], " to ", range[0],
        "; this rank's at ", steps,
        "): a rank died while the others finished a step, so their slices are not one model's; "
        "end the job's sessions (strata top --end-session NAME.rankR) and resume from a "
        "checkpoint (--resume DIR)"));
  }
  // A layer travels packed in one collective: rank q's segment holds its
  // slice of each of the layer's params in turn.
  uint64_t largest = 0, largest_mine = 0;
  for (const std::vector<ParamHandle>& ps : layers_) {
    RemoteDp::Layout l;
    l.counts.assign(world, 0);
    for (ParamHandle h : ps) {
      for (int q = 0; q < world; ++q) {
        l.counts[q] += partition_slice(params_[h].numel, q, world).numel;
      }
    }
    for (int q = 0; q < world; ++q) {
      l.pos.push_back(l.total);
      l.total += l.counts[q];
    }
    largest = std::max(largest, l.total);
    largest_mine = std::max(largest_mine, l.counts[rank]);
    dp.layout.push_back(std::move(l));
  }
  // The communicator reaches device memory only where it is host memory
  // (the simulated device): there the gradients are widened and the slices
  // narrowed on the device and only the rank's slice crosses PCIe.
  dp.on_device = device_->host_backed_memory();
  const size_t dsize = dtype_size(dtype_);
  const std::string what = "device scratch for the reduction across ranks";
  STRATA_ASSIGN_OR_RETURN(dp.stream, device_->create_stream(), what);
  dp.has_stream = true;
  if (dp.on_device) {
    STRATA_ASSIGN_OR_RETURN(dp.wide, device_->allocate(largest * sizeof(float)), what);
    STRATA_ASSIGN_OR_RETURN(dp.packed16, device_->allocate(largest * dsize), what);
    STRATA_ASSIGN_OR_RETURN(dp.part, device_->allocate(largest_mine * sizeof(float)), what);
    STRATA_ASSIGN_OR_RETURN(dp.part16, device_->allocate(largest_mine * dsize), what);
  } else {
    dp.host_wide.resize(largest);
    dp.host_part.resize(largest_mine);
    dp.staging.resize(largest * dsize);
    dp.host_mine16.resize(largest_mine * dsize);
  }
  return absl::OkStatus();
}

absl::Status TrainingEngine::reduce_grads_to_remote(int layer) {
  RemoteDp& dp = *rdp_;
  const RemoteDp::Layout& l = dp.layout[layer];
  const int world = dp.comm->world_size();
  const uint64_t mine = l.counts[dp.comm->rank()];
  const float mean = 1.0f / static_cast<float>(world);
  const size_t dsize = dtype_size(dtype_);
  const std::string what =
      absl::StrCat("reducing layer ", layer, "'s gradients across ", world, " ranks");
  const std::vector<ParamHandle>& ps = layers_[layer];
  std::vector<uint64_t> at = l.pos;  // per rank: where the next slice goes
  if (dp.on_device) {
    // Widened into the packed layout on the device; only the rank's part
    // of the sum comes back, in the compute dtype. On a stream of its own:
    // the layer's backward has run (the caller waited for it), and the
    // engine's stream already holds the next layers' backward, which the
    // reduction need not wait for.
    auto* wide = static_cast<float*>(dp.wide);
    for (ParamHandle h : ps) {
      const auto* grad = static_cast<const uint8_t*>(device_grads_[h]);
      for (int q = 0; q < world; ++q) {
        const ParamSlice sq = partition_slice(params_[h].numel, q, world);
        STRATA_RETURN_IF_ERROR(device_->cast(grad + sq.offset * dsize, dtype_, wide + at[q],
                                             DType::kFloat32, sq.numel, dp.stream),
                               what);
        at[q] += sq.numel;
      }
    }
    STRATA_RETURN_IF_ERROR(device_->synchronize_stream(dp.stream), what);
    STRATA_RETURN_IF_ERROR(
        dp.comm->reduce_scatter(wide, dp.part, l.counts, DType::kFloat32, dist::ReduceOp::kSum),
        what);
    STRATA_RETURN_IF_ERROR(device_->scale(dp.part, DType::kFloat32, mine, mean, dp.stream), what);
    STRATA_RETURN_IF_ERROR(
        device_->cast(dp.part, DType::kFloat32, dp.part16, dtype_, mine, dp.stream), what);
    uint64_t off = 0;
    for (ParamHandle h : ps) {
      const uint64_t n = dp.slice[h].numel;
      STRATA_RETURN_IF_ERROR(device_->copy_to_host(remote_->grad_memory(h),
                                                   static_cast<uint8_t*>(dp.part16) + off * dsize,
                                                   n * dsize, dp.stream),
                             what);
      off += n;
    }
    // The slices are in the remote's memory before it is told.
    return annotate(device_->synchronize_stream(dp.stream), what);
  }
  // The device's memory is out of the communicator's reach: the layer's
  // gradients cross whole (on the reduction's stream, as above) and are
  // summed in host memory.
  uint64_t base = 0;
  for (ParamHandle h : ps) {
    STRATA_RETURN_IF_ERROR(device_->copy_to_host(dp.staging.data() + base * dsize, device_grads_[h],
                                                 params_[h].numel * dsize, dp.stream),
                           what);
    base += params_[h].numel;
  }
  STRATA_RETURN_IF_ERROR(device_->synchronize_stream(dp.stream), what);
  base = 0;
  for (ParamHandle h : ps) {
    for (int q = 0; q < world; ++q) {
      const ParamSlice sq = partition_slice(params_[h].numel, q, world);
      convert_to_fp32(dp.staging.data() + (base + sq.offset) * dsize, dtype_,
                      dp.host_wide.data() + at[q], sq.numel);
      at[q] += sq.numel;
    }
    base += params_[h].numel;
  }
  STRATA_RETURN_IF_ERROR(dp.comm->reduce_scatter(dp.host_wide.data(), dp.host_part.data(), l.counts,
                                                 DType::kFloat32, dist::ReduceOp::kSum),
                         what);
  for (uint64_t i = 0; i < mine; ++i) dp.host_part[i] *= mean;
  uint64_t off = 0;
  for (ParamHandle h : ps) {
    const uint64_t n = dp.slice[h].numel;
    convert_from_fp32(dp.host_part.data() + off, dtype_, remote_->grad_memory(h), n);
    off += n;
  }
  return absl::OkStatus();
}

absl::Status TrainingEngine::gather_params_from_remote() {
  RemoteDp& dp = *rdp_;
  const int world = dp.comm->world_size();
  const size_t dsize = dtype_size(dtype_);
  const std::string what = absl::StrCat("gathering the updated params across ", world, " ranks");
  for (size_t layer = 0; layer < layers_.size(); ++layer) {
    const RemoteDp::Layout& l = dp.layout[layer];
    const std::vector<ParamHandle>& ps = layers_[layer];
    // The rank's slices, packed: on the device (only they cross PCIe), or
    // on the host beside a device the communicator cannot reach.
    auto* mine = static_cast<uint8_t*>(dp.on_device ? dp.part16 : dp.host_mine16.data());
    uint64_t off = 0;
    for (ParamHandle h : ps) {
      const uint64_t n = dp.slice[h].numel;
      const void* slice = remote_->param_memory(h);
      if (dp.on_device) {
        STRATA_RETURN_IF_ERROR(
            device_->copy_to_device(mine + off * dsize, slice, n * dsize, stream_), what);
      } else {
        std::memcpy(mine + off * dsize, slice, n * dsize);
      }
      off += n;
    }
    // Also the previous layer's copies out of the packed buffer are done.
    STRATA_RETURN_IF_ERROR(device_->synchronize_stream(stream_), what);
    auto* packed = static_cast<uint8_t*>(dp.on_device ? dp.packed16 : dp.staging.data());
    STRATA_RETURN_IF_ERROR(dp.comm->all_gather(mine, packed, l.counts, dtype_), what);
    std::vector<uint64_t> at = l.pos;
    for (ParamHandle h : ps) {
      auto* param = static_cast<uint8_t*>(device_params_[h]);
      for (int q = 0; q < world; ++q) {
        const ParamSlice sq = partition_slice(params_[h].numel, q, world);
        void* dst = param + sq.offset * dsize;
        const uint8_t* src = packed + at[q] * dsize;
        STRATA_RETURN_IF_ERROR(dp.on_device
                                   ? device_->copy_on_device(dst, src, sq.numel * dsize, stream_)
                                   : device_->copy_to_device(dst, src, sq.numel * dsize, stream_),
                               what);
        at[q] += sq.numel;
      }
    }
  }
  // The host staging is reused by the next reduction.
  if (!dp.on_device) STRATA_RETURN_IF_ERROR(device_->synchronize_stream(stream_), what);
  return absl::OkStatus();
}

absl::StatusOr<OptimizerStepResult> TrainingEngine::finish_remote_dp() {
  STRATA_ASSIGN_OR_RETURN(const StepGradStats local, remote_->finish_step_local());
  double sums[2] = {local.sum_squares, local.nonfinite ? 1.0 : 0.0};
  if (absl::Status s = rdp_->comm->all_reduce_host(sums, dist::ReduceOp::kSum); !s.ok()) {
    return remote_->abort_step(annotate(s, "summing the gradient norm across ranks"));
  }
  return remote_->finish_step_global({.sum_squares = sums[0], .nonfinite = sums[1] != 0});
}

absl::StatusOr<std::vector<float>> TrainingEngine::gather_remote_fp32(
    ParamHandle h, const std::vector<float>& slice) {
  const int world = rdp_->comm->world_size();
  const uint64_t n = params_[h].numel;
  if (slice.size() != rdp_->slice[h].numel) {
    return absl::InternalError(absl::StrCat("param ", params_[h].name, ": the remote returned ",
                                            slice.size(), " values for a slice of ",
                                            rdp_->slice[h].numel));
  }
  std::vector<float> whole(n);
  STRATA_RETURN_IF_ERROR(
      rdp_->comm->all_gather(slice.data(), whole.data(), partition_counts(n, world),
                             DType::kFloat32),
      absl::StrCat("gathering param ", params_[h].name, " across ", world, " ranks"));
  return whole;
}

absl::Status TrainingEngine::save_remote_shards(const std::string& dir) {
  return save_checkpoint_shards(
      rdp_->comm, dir, step_->steps(), absl::OkStatus(),
      [&](const std::string& shard_dir) { return step_->save_state(shard_dir, user_meta_); });
}

absl::Status TrainingEngine::load_remote_shards(const std::string& dir, bool weights_only) {
  const int rank = rdp_->comm->rank(), world = rdp_->comm->world_size();
  absl::Status mine = [&]() -> absl::Status {
    // Each rank's session reads its own shard: the slices must be the ones
    // it holds (a checkpoint of another world size is resharded by the
    // in-process optimizer only).
    STRATA_ASSIGN_OR_RETURN(const CheckpointShards cs, open_checkpoint_shards(dir));
    if (!cs.sharded || cs.world_size() != world) {
      return absl::FailedPreconditionError(absl::StrCat(
          dir, " was saved by ", cs.world_size(), cs.world_size() == 1 ? " rank" : " ranks",
          "; through stratad ", world, " ranks resume a checkpoint of ", world,
          " ranks: resume it in-process (any number of ranks), or through stratad with ",
          cs.world_size(), cs.world_size() == 1 ? " rank" : " ranks"));
    }
    return step_->load_state(checkpoint_shard_dir(dir, rank), weights_only);
  }();
  double failed[1] = {mine.ok() ? 0.0 : 1.0};
  const std::string what = absl::StrCat("loading checkpoint ", dir, " (rank ", rank, ")");
  STRATA_RETURN_IF_ERROR(rdp_->comm->all_reduce_host(failed, dist::ReduceOp::kMax), what);
  STRATA_RETURN_IF_ERROR(mine, what);
  if (failed[0] != 0) {
    return absl::AbortedError(absl::StrCat(what, ": another rank failed (its log says why)"));
  }
  return absl::OkStatus();
}

}  // namespace strata::engine

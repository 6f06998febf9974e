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
    rdp_->handle.push_back(static_cast<int>(slices.size()));
    ParamDesc mine = d;
    mine.numel = s.numel;
    slices.push_back(mine);
  }
  reg->params = std::move(slices);
  return absl::OkStatus();
}

absl::Status TrainingEngine::setup_remote_dp() {
  RemoteDp& dp = *rdp_;
  uint64_t largest = 0;
  for (const ParamDesc& d : params_) largest = std::max<uint64_t>(largest, d.numel);
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
  // The communicator reaches device memory only where it is host memory
  // (the simulated device): there the gradients are widened and the slices
  // narrowed on the device and only the rank's slice crosses PCIe.
  dp.on_device = device_->host_backed_memory();
  if (dp.on_device) {
    STRATA_ASSIGN_OR_RETURN(dp.wide, device_->allocate(largest * sizeof(float)),
                            "device scratch for the reduction across ranks");
    STRATA_ASSIGN_OR_RETURN(dp.part, device_->allocate(largest * sizeof(float)),
                            "device scratch for the reduction across ranks");
    STRATA_ASSIGN_OR_RETURN(dp.part16, device_->allocate(largest * dtype_size(dtype_)),
                            "device scratch for the reduction across ranks");
  } else {
    dp.host_wide.resize(largest);
    dp.host_part.resize(largest);
    dp.staging.resize(largest * dtype_size(dtype_));
  }
  return absl::OkStatus();
}

absl::Status TrainingEngine::reduce_grads_to_remote(int layer) {
  RemoteDp& dp = *rdp_;
  const int world = dp.comm->world_size();
  const float mean = 1.0f / static_cast<float>(world);
  const size_t dsize = dtype_size(dtype_);
  const std::string what =
      absl::StrCat("reducing layer ", layer, "'s gradients across ", world, " ranks");
  for (ParamHandle h : layers_[layer]) {
    const uint64_t n = params_[h].numel;
    const ParamSlice s = dp.slice[h];
    const std::vector<uint64_t> counts = partition_counts(n, world);
    void* grad = remote_->grad_memory(dp.handle[h]);
    if (dp.on_device) {
      // Widen on the device, sum over the ranks there, and bring back only
      // the rank's slice of the mean, in the compute dtype.
      STRATA_RETURN_IF_ERROR(
          device_->cast(device_grads_[h], dtype_, dp.wide, DType::kFloat32, n, stream_), what);
      STRATA_RETURN_IF_ERROR(device_->synchronize_stream(stream_), what);
      STRATA_RETURN_IF_ERROR(
          dp.comm->reduce_scatter(dp.wide, dp.part, counts, DType::kFloat32, dist::ReduceOp::kSum),
          what);
      STRATA_RETURN_IF_ERROR(device_->scale(dp.part, DType::kFloat32, s.numel, mean, stream_),
                             what);
      STRATA_RETURN_IF_ERROR(
          device_->cast(dp.part, DType::kFloat32, dp.part16, dtype_, s.numel, stream_), what);
      STRATA_RETURN_IF_ERROR(device_->copy_to_host(grad, dp.part16, s.numel * dsize, stream_),
                             what);
    } else {
      // The device's memory is out of the communicator's reach: the whole
      // gradient crosses and is summed in host memory.
      STRATA_RETURN_IF_ERROR(
          device_->copy_to_host(dp.staging.data(), device_grads_[h], n * dsize, stream_), what);
      STRATA_RETURN_IF_ERROR(device_->synchronize_stream(stream_), what);
      convert_to_fp32(dp.staging.data(), dtype_, dp.host_wide.data(), n);
      STRATA_RETURN_IF_ERROR(dp.comm->reduce_scatter(dp.host_wide.data(), dp.host_part.data(),
                                                     counts, DType::kFloat32, dist::ReduceOp::kSum),
                             what);
      for (uint64_t i = 0; i < s.numel; ++i) dp.host_part[i] *= mean;
      convert_from_fp32(dp.host_part.data(), dtype_, grad, s.numel);
    }
  }
  // The slices are in the remote's memory before it is told.
  if (dp.on_device) STRATA_RETURN_IF_ERROR(device_->synchronize_stream(stream_), what);
  return absl::OkStatus();
}

absl::Status TrainingEngine::gather_params_from_remote() {
  RemoteDp& dp = *rdp_;
  const int world = dp.comm->world_size();
  const size_t dsize = dtype_size(dtype_);
  const std::string what = absl::StrCat("gathering the updated params across ", world, " ranks");
  for (size_t h = 0; h < params_.size(); ++h) {
    const uint64_t n = params_[h].numel;
    const ParamSlice s = dp.slice[h];
    const std::vector<uint64_t> counts = partition_counts(n, world);
    const void* mine = remote_->param_memory(dp.handle[h]);
    if (dp.on_device) {
      // Only the rank's slice crosses PCIe; the rest comes from the others.
      STRATA_RETURN_IF_ERROR(device_->copy_to_device(dp.part16, mine, s.numel * dsize, stream_),
                             what);
      STRATA_RETURN_IF_ERROR(device_->synchronize_stream(stream_), what);
      STRATA_RETURN_IF_ERROR(dp.comm->all_gather(dp.part16, device_params_[h], counts, dtype_),
                             what);
    } else {
      STRATA_RETURN_IF_ERROR(dp.comm->all_gather(mine, dp.staging.data(), counts, dtype_), what);
      STRATA_RETURN_IF_ERROR(
          device_->copy_to_device(device_params_[h], dp.staging.data(), n * dsize, stream_), what);
      // The staging buffer is the next param's.
      STRATA_RETURN_IF_ERROR(device_->synchronize_stream(stream_), what);
    }
  }
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

// Data-parallel checkpoints: one shard per rank, resharded on load.
#include "absl/strings/str_cat.h"
#include "engine/offload_optimizer_impl.h"

namespace strata::engine {

bool is_sharded_checkpoint(const std::string&) { return false; }

absl::Status OffloadOptimizer::Impl::save_shards(const std::string& dir, const nlohmann::json&) {
  return absl::UnimplementedError(
      absl::StrCat("saving checkpoint ", dir, ": checkpoints across ", world,
                   " data-parallel ranks are not implemented yet in this build"));
}
absl::Status OffloadOptimizer::Impl::load_shards(const std::string& dir, bool) {
  return absl::UnimplementedError(
      absl::StrCat("loading checkpoint ", dir, ": checkpoints across ", world,
                   " data-parallel ranks are not implemented yet in this build"));
}

}  // namespace strata::engine

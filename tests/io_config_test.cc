// swap::io_engine_options: the ds_config aio section and the nvme_path list
// onto the I/O engine's options (swap/io_config.h).
#include "swap/io_config.h"

#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "core/config/ds_config.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "swap/aligned_buffer.h"
#include "swap/io_engine.h"

namespace strata::swap {
namespace {

using nlohmann::json;
using ::testing::HasSubstr;

TEST(IoConfigTest, CopiesTheAioKeysAndOneRingPerDirectory) {
  config::AioConfig aio;
  aio.block_size = 2 << 20;
  aio.queue_depth = 32;
  aio.intra_op_parallelism = 4;
  aio.single_submit = true;
  aio.overlap_events = false;
  auto o = io_engine_options(aio, {"/nvme0/x", "/nvme1/x"});
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->block_size, size_t{2} << 20);
  EXPECT_EQ(o->queue_depth, 32);
  EXPECT_EQ(o->threads, 4);
  EXPECT_TRUE(o->single_submit);
  EXPECT_FALSE(o->overlap_events);
  EXPECT_EQ(o->paths, (std::vector<std::string>{"/nvme0/x", "/nvme1/x"}));
}

TEST(IoConfigTest, OutOfRangeValuesNameTheAioKey) {
  config::AioConfig aio;
  aio.queue_depth = 0;
  EXPECT_THAT(io_engine_options(aio, {"/d"}).status().message(), HasSubstr("aio.queue_depth"));
  aio = {};
  aio.block_size = 1000;
  EXPECT_THAT(io_engine_options(aio, {"/d"}).status().message(), HasSubstr("aio.block_size"));
  aio = {};
  aio.intra_op_parallelism = int64_t{1} << 40;  // clamped, not wrapped into range
  EXPECT_THAT(io_engine_options(aio, {"/d"}).status().message(),
              HasSubstr("aio.intra_op_parallelism"));
  EXPECT_THAT(io_engine_options({}, {}).status().message(), HasSubstr("nvme_path"));
}

// nvme_path given as a JSON list in the ds_config: two directories, one
// engine striping a file over both; data written through it reads back and
// each directory holds its half.
TEST(IoConfigTest, ListNvmePathStripesOverEachDirectory) {
  const std::filesystem::path root =
      std::filesystem::path(::testing::TempDir()) / ("io_config_" + std::to_string(getpid()));
  const std::filesystem::path d0 = root / "nvme0", d1 = root / "nvme1";
  std::filesystem::create_directories(d0);
  std::filesystem::create_directories(d1);
  const json j = {
      {"train_micro_batch_size_per_gpu", 1},
      {"zero_optimization",
       {{"stage", 2},
        {"offload_optimizer",
         {{"device", "nvme"}, {"nvme_path", json::array({d0.string(), d1.string()})}}}}},
      {"aio", {{"block_size", 65536}, {"queue_depth", 16}, {"intra_op_parallelism", 2}}}};
  std::vector<std::string> warnings;
  auto cfg = config::parse_ds_config(j.dump(), "test.json", &warnings);
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  const std::vector<std::string>& dirs = cfg->zero.offload_optimizer.nvme_paths;
  ASSERT_EQ(dirs, (std::vector<std::string>{d0.string(), d1.string()}));

  auto o = io_engine_options(cfg->aio, dirs);
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->block_size, 65536u);
  EXPECT_EQ(o->queue_depth, 16);
  EXPECT_EQ(o->threads, 2);
  o->allow_buffered = true;  // tmpfs TempDir on some machines
  auto engine = make_io_engine(*o);
  ASSERT_TRUE(engine.ok()) << engine.status();
  IoEngine& io = **engine;
  {
    auto f = io.open(stripe_paths(io.options(), "run.swp"), {.create = true, .truncate = true});
    ASSERT_TRUE(f.ok()) << f.status();
    constexpr size_t kLen = 1 << 20;  // 16 stripes of 64 KiB
    AlignedBuffer out(kLen), in(kLen);
    for (size_t i = 0; i < kLen; ++i) out.data()[i] = static_cast<char>(i * 7 + i / 4096);
    ASSERT_TRUE(io.write(*f, 0, out.data(), kLen).ok());
    ASSERT_TRUE(io.read(*f, 0, in.data(), kLen).ok());
    EXPECT_EQ(std::memcmp(out.data(), in.data(), kLen), 0);
    ASSERT_TRUE(io.close(*f).ok());
    EXPECT_EQ(std::filesystem::file_size(d0 / "run.swp"), kLen / 2);
    EXPECT_EQ(std::filesystem::file_size(d1 / "run.swp"), kLen / 2);
  }
  engine->reset();
  std::filesystem::remove_all(root);
}

// DeepSpeed's comma-separated nvme_path string gives the same rings as a
// list; pipeline_read / pipeline_write map onto the store's read-ahead and
// write-behind (unset keeps each on, false turns it off).
TEST(IoConfigTest, CommaSeparatedNvmePathAndPipelineKeys) {
  const json j = {
      {"train_micro_batch_size_per_gpu", 1},
      {"zero_optimization",
       {{"stage", 2},
        {"offload_optimizer",
         {{"device", "nvme"}, {"nvme_path", "/nvme0,/nvme1"}, {"pipeline_write", false}}}}}};
  auto cfg = config::parse_ds_config(j.dump(), "test.json", nullptr);
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  auto o = io_engine_options(cfg->aio, cfg->zero.offload_optimizer.nvme_paths);
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->paths, (std::vector<std::string>{"/nvme0", "/nvme1"}));
  const NvmePipeline p = nvme_pipeline(cfg->zero.offload_optimizer);
  EXPECT_TRUE(p.read_ahead);     // unset: on
  EXPECT_FALSE(p.write_behind);  // false: off
  config::OffloadOptimizerConfig both;
  both.pipeline_read = false;
  both.pipeline_write = true;
  EXPECT_FALSE(nvme_pipeline(both).read_ahead);
  EXPECT_TRUE(nvme_pipeline(both).write_behind);
}

}  // namespace
}  // namespace strata::swap

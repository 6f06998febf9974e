// Saves never destroy what strata did not write (engine/checkpoint_dir.h):
// check_checkpoint_destination refuses a folder of the user's files, a
// regular file, a symlink, the same at DIR.old and a DIR.tmp-<pid> that is
// not a save's; a save to such a place fails and leaves it as it was. And
// leftovers of killed runs (a save's DIR.tmp-<pid>, the NVMe swap file) are
// removed when their owner is gone, never while it lives.
#include "engine/checkpoint_dir.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <memory>
#include <string>

#include "core/config/ds_config.h"
#include "engine/swap_scratch.h"
#include "engine/training_engine.h"
#include "gpu/sim_device.h"
#include "gtest/gtest.h"
#include "tests/cli_test_util.h"
#include "tests/mlp_test_model.h"
#include "tests/test_ds_config.h"

namespace strata::engine {
namespace {

namespace fs = std::filesystem;
using strata::testing::ScratchDir;
using test_models::MlpTestModel;

class CheckpointDirTest : public ::testing::Test {
 protected:
  std::unique_ptr<TrainingEngine> make_engine(MlpTestModel* model, bool nvme = false) {
    const std::string offload = nvme ? "{\"device\": \"nvme\", \"nvme_path\": \"" + swap() + "\"}"
                                     : "{\"device\": \"cpu\"}";
    EngineOptions o;
    o.allow_buffered_io = true;
    auto e = TrainingEngine::create(
        strata::testing::parse_test_config(
            "{\"train_micro_batch_size_per_gpu\": 32, \"gradient_accumulation_steps\": 1, "
            "\"optimizer\": {\"type\": \"AdamW\", \"params\": {\"lr\": 0.01}}, "
            "\"zero_optimization\": {\"stage\": 2, \"offload_optimizer\": " +
            offload + "}}"),
        model, &device_, std::move(o));
    EXPECT_TRUE(e.ok()) << e.status();
    return e.ok() ? std::move(*e) : nullptr;
  }
  std::string ckpt() const { return dir_.path() + "/ckpt"; }
  std::string swap() const { return dir_.path() + "/swap"; }
  // A real checkpoint at ckpt().
  void save_one() {
    MlpTestModel model;
    auto e = make_engine(&model);
    ASSERT_NE(e, nullptr);
    ASSERT_TRUE(e->train_step().ok());
    const absl::Status s = e->save_checkpoint(ckpt());
    ASSERT_TRUE(s.ok()) << s;
  }

  ScratchDir dir_{"strata_checkpoint_dir_test_"};
  gpu::SimDevice device_;
};

// A child creates `path` (a directory with a tensors.bin of `bytes`, or a
// file of `bytes`), locks it, and exits: a killed run's leftover.
void leave_behind_by_dead_owner(const std::string& path, bool dir, size_t bytes) {
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    int fd = -1, data = -1;
    if (dir) {
      if (::mkdir(path.c_str(), 0700) != 0) ::_exit(1);
      fd = ::open(path.c_str(), O_RDONLY | O_DIRECTORY);
      data = ::open((path + "/tensors.bin").c_str(), O_WRONLY | O_CREAT, 0600);
    } else {
      fd = data = ::open(path.c_str(), O_RDWR | O_CREAT | O_EXCL, 0600);
    }
    if (fd < 0 || data < 0 || ::ftruncate(data, static_cast<off_t>(bytes)) != 0) ::_exit(1);
    if (::flock(fd, LOCK_EX) != 0) ::_exit(1);
    ::_exit(0);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

TEST_F(CheckpointDirTest, DestinationMustBeNewEmptyOrAStrataCheckpoint) {
  EXPECT_TRUE(check_checkpoint_destination(ckpt()).ok());
  EXPECT_TRUE(check_checkpoint_destination(dir_.path() + "/not/yet/there").ok());
  fs::create_directories(ckpt());
  EXPECT_TRUE(check_checkpoint_destination(ckpt() + "/").ok()) << "an empty folder loses nothing";
  fs::remove(ckpt());
  save_one();
  EXPECT_TRUE(check_checkpoint_destination(ckpt()).ok());

  // A folder of the user's files, a regular file, a symlink: refused,
  // naming the path and what to do.
  const std::string user = dir_.path() + "/thesis";
  dir_.write("thesis/chapter1.tex", "years of work");
  absl::Status s = check_checkpoint_destination(user);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_NE(s.message().find(user), std::string::npos) << s;
  EXPECT_NE(s.message().find("chapter1.tex"), std::string::npos) << s;
  EXPECT_NE(s.message().find("choose a new path"), std::string::npos) << s;
  const std::string file = dir_.write("notes.txt", "x");
  EXPECT_NE(check_checkpoint_destination(file).message().find("a regular file"), std::string::npos);
  fs::create_directory_symlink(ckpt(), dir_.path() + "/link");
  EXPECT_NE(check_checkpoint_destination(dir_.path() + "/link").message().find("symbolic link"),
            std::string::npos);
  // A checkpoint-looking folder with one extra file of the user's.
  dir_.write("ckpt/README", "mine");
  EXPECT_FALSE(check_checkpoint_destination(ckpt()).ok());
  fs::remove(ckpt() + "/README");
  // A meta.json without the marker.
  const std::string fake = dir_.path() + "/fake";
  dir_.write("fake/meta.json", "{\"format\": \"something else\"}");
  EXPECT_FALSE(check_checkpoint_destination(fake).ok());

  // DIR.old and this process's DIR.tmp-<pid>: the same rule.
  dir_.write("ckpt.old/data.csv", "1,2,3");
  s = check_checkpoint_destination(ckpt());
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_NE(s.message().find(ckpt() + ".old"), std::string::npos) << s;
  fs::remove_all(ckpt() + ".old");
  dir_.write("ckpt.tmp-" + std::to_string(::getpid()) + "/photo.jpg", "x");
  EXPECT_FALSE(check_checkpoint_destination(ckpt()).ok());
  fs::remove_all(ckpt() + ".tmp-" + std::to_string(::getpid()));
  EXPECT_TRUE(check_checkpoint_destination(ckpt()).ok());
}

// The measured bug: a 2-step run with --save-dir pointing at a folder of the
// user's deleted a file in it. Now the save fails and everything stays.
TEST_F(CheckpointDirTest, SaveRefusesToReplaceTheUsersData) {
  const std::string user = dir_.write("ckpt/keep.txt", "precious");
  const std::string old = dir_.write("other.old/keep.txt", "precious too");
  const std::string file = dir_.write("plain", "a file");
  MlpTestModel model;
  auto e = make_engine(&model);
  ASSERT_NE(e, nullptr);
  ASSERT_TRUE(e->train_step().ok());
  for (const std::string& dir : {ckpt(), dir_.path() + "/other", file}) {
    const absl::Status s = e->save_checkpoint(dir);
    EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << dir << ": " << s;
    EXPECT_FALSE(e->save_checkpoint_async(dir).ok()) << dir;
  }
  EXPECT_TRUE(e->wait_for_checkpoint().ok());
  EXPECT_EQ(strata::testing::slurp(user), "precious");
  EXPECT_EQ(strata::testing::slurp(old), "precious too");
  EXPECT_EQ(strata::testing::slurp(file), "a file");
  EXPECT_FALSE(fs::exists(dir_.path() + "/other/meta.json"));
  // Its own checkpoints it replaces, again and again.
  const std::string mine = dir_.path() + "/mine";
  ASSERT_TRUE(e->save_checkpoint(mine).ok());
  ASSERT_TRUE(e->train_step().ok());
  ASSERT_TRUE(e->save_checkpoint(mine).ok());
  ASSERT_TRUE(e->save_checkpoint_async(mine).ok());
  EXPECT_TRUE(e->wait_for_checkpoint().ok());
  EXPECT_TRUE(check_checkpoint_destination(mine).ok());
}

// A killed save's DIR.tmp-<pid> is removed by the next save (and reported);
// a live save's (locked) makes the destination check refuse: two runs must
// not share a checkpoint directory. A folder that only looks like one by name
// is left alone.
TEST_F(CheckpointDirTest, DeadSavesTemporariesAreRemovedLiveOnesRefused) {
  save_one();
  const std::string dead = ckpt() + ".tmp-999991";
  leave_behind_by_dead_owner(dead, /*dir=*/true, 4096);
  const std::string users = dir_.write("ckpt.tmp-5/mine.txt", "x");
  const std::string older = dir_.write("ckpt.tmp-999990/meta.json.tmp", "{");  // an older strata
  auto removed = remove_dead_checkpoint_temps(ckpt());
  ASSERT_TRUE(removed.ok()) << removed.status();
  ASSERT_EQ(removed->size(), 2u);
  for (const RemovedScratch& r : *removed) {
    EXPECT_TRUE(r.path == dead || r.path == fs::path(older).parent_path().string()) << r.path;
    EXPECT_EQ(r.bytes, r.path == dead ? 4096u : 1u);
  }
  EXPECT_FALSE(fs::exists(dead));
  EXPECT_FALSE(fs::exists(older));
  EXPECT_TRUE(fs::exists(users));

  // A save in progress elsewhere: its temporary is locked.
  const std::string live = ckpt() + ".tmp-999992";
  fs::create_directories(live);
  auto lock = ScratchLock::lock(live);
  ASSERT_TRUE(lock.ok()) << lock.status();
  const absl::Status s = check_checkpoint_destination(ckpt());
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_NE(s.message().find("another strata run"), std::string::npos) << s;
  removed = remove_dead_checkpoint_temps(ckpt());
  ASSERT_TRUE(removed.ok());
  EXPECT_TRUE(removed->empty());
  EXPECT_TRUE(fs::exists(live));
  lock->release();

  // The next save removes the now-dead one itself.
  leave_behind_by_dead_owner(dead, /*dir=*/true, 10);
  MlpTestModel model;
  auto e = make_engine(&model);
  ASSERT_NE(e, nullptr);
  ASSERT_TRUE(e->save_checkpoint(ckpt()).ok());
  EXPECT_FALSE(fs::exists(dead));
  EXPECT_FALSE(fs::exists(live));
  EXPECT_TRUE(fs::exists(users));
}

// An engine homing states on NVMe removes the swap files of runs that are
// gone, keeps a live one's (here: another engine of this process), and its
// own is gone when it is.
TEST_F(CheckpointDirTest, DeadRunsSwapFilesAreRemovedLiveOnesKept) {
  fs::create_directories(swap());
  const std::string dead = swap() + "/strata_optimizer_999993.swp";
  leave_behind_by_dead_owner(dead, /*dir=*/false, 1 << 20);
  const std::string unrelated = dir_.write("swap/strata_optimizer_notes.swp", "x");

  MlpTestModel model_a;
  auto a = make_engine(&model_a, /*nvme=*/true);
  ASSERT_NE(a, nullptr);
  EXPECT_FALSE(fs::exists(dead)) << "a dead run's swap file was left";
  EXPECT_TRUE(fs::exists(unrelated));
  const std::string own = swap() + "/strata_optimizer_" + std::to_string(::getpid()) + ".swp";
  EXPECT_TRUE(fs::exists(own));

  MlpTestModel model_b;
  auto b = make_engine(&model_b, /*nvme=*/true);  // a second engine: its own file
  ASSERT_NE(b, nullptr);
  EXPECT_TRUE(fs::exists(own)) << "a live engine's swap file was removed";
  EXPECT_TRUE(a->train_step().ok());
  EXPECT_TRUE(b->train_step().ok());
  b.reset();
  EXPECT_TRUE(fs::exists(own));
  a.reset();
  EXPECT_FALSE(fs::exists(own));
  EXPECT_TRUE(remove_dead_swap_files(swap()).ok());
}

}  // namespace
}  // namespace strata::engine

// core/scratch_lock: a dead owner's leftover (its lock was dropped when the
// process exited) is removed and reported; a live owner's (lock held through
// an open fd) and anything the caller does not call scratch stay.
#include "core/scratch_lock.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <string>

#include "gtest/gtest.h"
#include "tests/cli_test_util.h"

namespace strata {
namespace {

namespace fs = std::filesystem;
using ::strata::testing::ScratchDir;

// A child process creates `path` (a file of `bytes`, or a directory), locks
// it and exits: the owner is dead, its lock gone.
void leave_behind_by_dead_owner(const std::string& path, bool dir, size_t bytes) {
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    int fd = -1;
    if (dir) {
      if (::mkdir(path.c_str(), 0700) != 0) ::_exit(1);
      fd = ::open(path.c_str(), O_RDONLY | O_DIRECTORY);
    } else {
      fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_EXCL, 0600);
      if (fd >= 0 && ::ftruncate(fd, static_cast<off_t>(bytes)) != 0) ::_exit(1);
    }
    if (fd < 0 || ::flock(fd, LOCK_EX) != 0) ::_exit(1);
    ::_exit(0);  // killed mid-run, as far as the file system can tell
  }
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

TEST(ScratchLockTest, RemovesOnlyLeftoversWhoseOwnerIsGone) {
  ScratchDir dir("strata_scratch_lock_test_");
  const std::string dead = dir.path() + "/dead.swp", live = dir.path() + "/live.swp";
  const std::string other = dir.write("other.swp", "not scratch");
  leave_behind_by_dead_owner(dead, /*dir=*/false, 12345);
  const std::string dead_dir = dir.path() + "/dead.tmp";
  leave_behind_by_dead_owner(dead_dir, /*dir=*/true, 0);
  dir.write("dead.tmp/tensors.bin", std::string(100, 'x'));

  auto held = ScratchLock::create_file(live);  // a live run: this process
  ASSERT_TRUE(held.ok()) << held.status();
  EXPECT_TRUE(held->held());

  auto removed = remove_unowned_scratch(
      dir.path(), [&](const std::string& p) { return p == dead || p == live || p == dead_dir; });
  ASSERT_TRUE(removed.ok()) << removed.status();
  ASSERT_EQ(removed->size(), 2u);
  for (const RemovedScratch& r : *removed) {
    if (r.path == dead) {
      EXPECT_EQ(r.bytes, 12345u);
    } else {
      EXPECT_EQ(r.path, dead_dir);
      EXPECT_EQ(r.bytes, 100u);
    }
  }
  EXPECT_FALSE(fs::exists(dead));
  EXPECT_FALSE(fs::exists(dead_dir));
  EXPECT_TRUE(fs::exists(live));
  EXPECT_TRUE(fs::exists(other));

  // Once its owner lets go, the live one is a leftover too.
  held->release();
  removed = remove_unowned_scratch(dir.path(), [&](const std::string& p) { return p == live; });
  ASSERT_TRUE(removed.ok()) << removed.status();
  EXPECT_EQ(removed->size(), 1u);
  EXPECT_FALSE(fs::exists(live));
}

TEST(ScratchLockTest, LocksAreExclusiveAndRefuseSymlinksAndExistingNames) {
  ScratchDir dir("strata_scratch_lock_test_");
  const std::string f = dir.path() + "/f";
  auto a = ScratchLock::create_file(f);
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(ScratchLock::create_file(f).status().code(), absl::StatusCode::kAlreadyExists);
  const absl::Status second = ScratchLock::lock(f).status();
  EXPECT_EQ(second.code(), absl::StatusCode::kFailedPrecondition) << second;
  ScratchLock moved = std::move(*a);
  EXPECT_FALSE(ScratchLock::lock(f).ok());
  moved.release();
  EXPECT_TRUE(ScratchLock::lock(f).ok());

  ASSERT_EQ(::symlink(f.c_str(), (dir.path() + "/link").c_str()), 0);
  EXPECT_FALSE(ScratchLock::lock(dir.path() + "/link").ok());
  auto removed = remove_unowned_scratch(dir.path(), [](const std::string&) { return true; });
  ASSERT_TRUE(removed.ok()) << removed.status();
  EXPECT_TRUE(fs::is_symlink(dir.path() + "/link")) << "a symlink was removed";
  EXPECT_TRUE(remove_unowned_scratch(dir.path() + "/missing", [](const std::string&) {
                return true;
              }).ok());
}

}  // namespace
}  // namespace strata

#include "core/file_util.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace strata {
namespace {

namespace fs = std::filesystem;

class FileUtilTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("strata_file_util_" + std::to_string(::getpid()));
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string path(const char* name) const { return (dir_ / name).string(); }
  fs::path dir_;
};

TEST_F(FileUtilTest, ReadsARegularFile) {
  ASSERT_TRUE(write_file_atomic(path("a.json"), "{\"x\": 1}").ok());
  auto text = read_file(path("a.json"));
  ASSERT_TRUE(text.ok()) << text.status();
  EXPECT_EQ(*text, "{\"x\": 1}");
}

TEST_F(FileUtilTest, RefusesWhatIsNotARegularFile) {
  auto missing = read_file(path("missing"));
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(missing.status().message().find(path("missing")), std::string::npos);

  auto dir = read_file(dir_.string());
  EXPECT_EQ(dir.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(dir.status().message().find("directory"), std::string::npos);

  // A FIFO with no writer: a blocking open would never return.
  ASSERT_EQ(::mkfifo(path("fifo").c_str(), 0600), 0);
  auto fifo = read_file(path("fifo"));
  EXPECT_EQ(fifo.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(fifo.status().message().find("not a regular file"), std::string::npos);

  // /dev/zero never ends.
  auto zero = read_file("/dev/zero");
  EXPECT_EQ(zero.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(FileUtilTest, RefusesAFileLargerThanTheBound) {
  ASSERT_TRUE(write_file_atomic(path("big"), std::string(4096, 'x')).ok());
  auto big = read_file(path("big"), 1000);
  ASSERT_FALSE(big.ok());
  EXPECT_NE(big.status().message().find("4096 bytes"), std::string::npos) << big.status();
  EXPECT_TRUE(read_file(path("big"), 4096).ok());
}

TEST_F(FileUtilTest, ReadsProcFilesThatReportSizeZero) {
  auto stat = read_file("/proc/self/status");
  ASSERT_TRUE(stat.ok()) << stat.status();
  EXPECT_NE(stat->find("Pid:"), std::string::npos);
}

// Outputs written by rename-over replace only a regular file or create a new
// path: a FIFO, a symlink (and what it points to) and a directory stay as
// they were, and /dev/null is never a place to write.
TEST_F(FileUtilTest, WriteFileAtomicReplacesOnlyRegularFiles) {
  ASSERT_EQ(::mkfifo(path("fifo").c_str(), 0600), 0);
  absl::Status s = write_file_atomic(path("fifo"), "x");
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_NE(s.message().find("a FIFO"), std::string::npos) << s;
  struct stat st;
  ASSERT_EQ(::lstat(path("fifo").c_str(), &st), 0);
  EXPECT_TRUE(S_ISFIFO(st.st_mode)) << "the FIFO was replaced";

  ASSERT_TRUE(write_file_atomic(path("target"), "keep").ok());
  fs::create_symlink(path("target"), path("link"));
  s = write_file_atomic(path("link"), "new");
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_NE(s.message().find("symbolic link"), std::string::npos) << s;
  EXPECT_TRUE(fs::is_symlink(path("link")));
  EXPECT_EQ(*read_file(path("target")), "keep");

  fs::create_directories(path("folder"));
  EXPECT_FALSE(write_file_atomic(path("folder"), "x").ok());
  EXPECT_TRUE(fs::is_directory(path("folder")));

  const absl::Status dev = check_output_path("/dev/null");
  EXPECT_EQ(dev.code(), absl::StatusCode::kFailedPrecondition) << dev;
  EXPECT_NE(dev.message().find("a device"), std::string::npos) << dev;

  // A regular file and a new path are fine; nothing temporary is left.
  EXPECT_TRUE(write_file_atomic(path("target"), "new").ok());
  EXPECT_EQ(*read_file(path("target")), "new");
  EXPECT_TRUE(write_file_atomic(path("fresh"), "x").ok());
  int entries = 0;
  for ([[maybe_unused]] const auto& e : fs::directory_iterator(dir_)) ++entries;
  EXPECT_EQ(entries, 5);  // fifo, target, link, folder, fresh
}

// A temporary name already taken by a symlink is not followed.
TEST_F(FileUtilTest, CreateNewFileNeverFollowsASymlink) {
  ASSERT_TRUE(write_file_atomic(path("victim"), "keep").ok());
  fs::create_symlink(path("victim"), path("tmp"));
  auto fd = create_new_file(path("tmp"));
  EXPECT_FALSE(fd.ok());
  EXPECT_EQ(*read_file(path("victim")), "keep");
  auto fresh = create_new_file(path("new"));
  ASSERT_TRUE(fresh.ok()) << fresh.status();
  ::close(*fresh);
}

// The same file under another name (a hard link, a symlink) is an input.
TEST_F(FileUtilTest, OutputThatIsAnInputIsRefused) {
  ASSERT_TRUE(write_file_atomic(path("in"), "data").ok());
  fs::create_hard_link(path("in"), path("hard"));
  fs::create_symlink(path("in"), path("soft"));
  const absl::Status direct = check_output_is_not_input(path("in"), {path("other"), path("in")});
  EXPECT_EQ(direct.code(), absl::StatusCode::kFailedPrecondition) << direct;
  EXPECT_NE(direct.message().find("an input"), std::string::npos) << direct;
  EXPECT_FALSE(check_output_is_not_input(path("hard"), {path("in")}).ok());
  EXPECT_FALSE(check_output_is_not_input(path("in"), {path("soft")}).ok());
  EXPECT_TRUE(check_output_is_not_input(path("new"), {path("in")}).ok());
  ASSERT_TRUE(write_file_atomic(path("out"), "x").ok());
  EXPECT_TRUE(check_output_is_not_input(path("out"), {path("in")}).ok());
}

TEST_F(FileUtilTest, ListsADirectory) {
  ASSERT_TRUE(write_file_atomic(path("a"), "x").ok());
  fs::create_directories(path("b"));
  auto names = list_directory(dir_.string());
  ASSERT_TRUE(names.ok()) << names.status();
  std::sort(names->begin(), names->end());
  EXPECT_EQ(*names, (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(list_directory(path("missing")).status().code(), absl::StatusCode::kNotFound);
}

TEST(PathNames, StripTrailingSlashesAndParentDir) {
  EXPECT_EQ(strip_trailing_slashes("ck//"), "ck");
  EXPECT_EQ(strip_trailing_slashes("/"), "/");
  EXPECT_EQ(strip_trailing_slashes(""), "");
  EXPECT_EQ(parent_dir("ck"), ".");
  EXPECT_EQ(parent_dir("runs/ck"), "runs");
  EXPECT_EQ(parent_dir("/ck"), "/");
}

}  // namespace
}  // namespace strata

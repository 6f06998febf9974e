#include "core/file_util.h"

#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <string>

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

}  // namespace
}  // namespace strata

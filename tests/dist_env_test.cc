// rank_info_from_env: torchrun's variables, and errors naming the variable.
#include <cstdlib>
#include <string>

#include "dist/communicator.h"
#include "gtest/gtest.h"

namespace strata::dist {
namespace {

class DistEnv : public ::testing::Test {
 protected:
  void SetUp() override { clear(); }
  void TearDown() override { clear(); }
  static void clear() {
    for (const char* v :
         {"RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"}) {
      unsetenv(v);
    }
  }
  static void set(const char* name, const char* value) { setenv(name, value, 1); }
  static void expect_error_naming(const char* name) {
    auto info = rank_info_from_env();
    ASSERT_FALSE(info.ok());
    EXPECT_TRUE(absl::IsInvalidArgument(info.status())) << info.status();
    EXPECT_NE(info.status().message().find(name), std::string::npos) << info.status();
  }
};

TEST_F(DistEnv, NothingSetIsOneRank) {
  auto info = rank_info_from_env();
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->rank, 0);
  EXPECT_EQ(info->world_size, 1);
  EXPECT_EQ(info->local_rank, 0);
  EXPECT_EQ(info->local_world_size, 1);
}

TEST_F(DistEnv, TorchrunVariablesAreRead) {
  set("RANK", "5");
  set("WORLD_SIZE", "8");
  set("LOCAL_RANK", "1");
  set("LOCAL_WORLD_SIZE", "4");
  set("MASTER_ADDR", "node0.example");
  set("MASTER_PORT", "29600");
  auto info = rank_info_from_env();
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->rank, 5);
  EXPECT_EQ(info->world_size, 8);
  EXPECT_EQ(info->local_rank, 1);
  EXPECT_EQ(info->local_world_size, 4);
  EXPECT_EQ(info->master_addr, "node0.example");
  EXPECT_EQ(info->master_port, 29600);
}

TEST_F(DistEnv, DefaultsForTheRest) {
  set("RANK", "2");
  set("WORLD_SIZE", "3");
  auto info = rank_info_from_env();
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->local_rank, 2);  // one node unless told otherwise
  EXPECT_EQ(info->local_world_size, 3);
  EXPECT_EQ(info->master_addr, "127.0.0.1");
  EXPECT_EQ(info->master_port, 29500);
  set("LOCAL_WORLD_SIZE", "2");
  info = rank_info_from_env();
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->local_rank, 0);  // rank 2 of 2 per node
}

TEST_F(DistEnv, ErrorsNameTheVariable) {
  set("RANK", "1");
  expect_error_naming("WORLD_SIZE");
  clear();
  set("WORLD_SIZE", "2");
  expect_error_naming("RANK");
  set("RANK", "2");
  expect_error_naming("RANK");  // not below WORLD_SIZE
  set("RANK", "one");
  expect_error_naming("RANK");
  set("RANK", "-1");
  expect_error_naming("RANK");
  set("RANK", "1");
  set("WORLD_SIZE", "0");
  expect_error_naming("WORLD_SIZE");
  set("WORLD_SIZE", "2");
  set("MASTER_PORT", "70000");
  expect_error_naming("MASTER_PORT");
  set("MASTER_PORT", "29500x");
  expect_error_naming("MASTER_PORT");
  unsetenv("MASTER_PORT");
  set("LOCAL_RANK", "3");
  set("LOCAL_WORLD_SIZE", "2");
  expect_error_naming("LOCAL_RANK");
  set("LOCAL_WORLD_SIZE", "9");
  expect_error_naming("LOCAL_WORLD_SIZE");
}

}  // namespace
}  // namespace strata::dist

#include "core/trace.h"

#include <unistd.h>

#include <thread>
#include <vector>

#include "core/file_util.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace strata {
namespace {

TEST(Trace, OffRecordsNothing) {
  TraceRecorder trace;
  { TraceScope s(&trace, "fwd", "engine"); }
  trace.counter("loss_scale", 65536);
  EXPECT_EQ(trace.size(), 0u);
  TraceScope null_recorder(nullptr, "fwd", "engine");  // must be harmless
}

TEST(Trace, WritesChromeJsonFromManyThreads) {
  TraceRecorder trace;
  trace.start();
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&trace, t] {
      for (int i = 0; i < 100; ++i) {
        TraceScope s(&trace, "nvme_read", "swap");
        s.arg("bytes", 4096 * (t + 1));
      }
    });
  }
  for (auto& th : threads) th.join();
  trace.counter("loss_scale", 1024);
  ASSERT_EQ(trace.size(), 401u);

  const std::string path = ::testing::TempDir() + "/trace_test.json";
  ASSERT_TRUE(trace.write_chrome_json(path).ok());
  auto text = read_file(path);
  ASSERT_TRUE(text.ok());
  auto doc = nlohmann::json::parse(*text);
  ASSERT_TRUE(doc["traceEvents"].is_array());
  ASSERT_EQ(doc["traceEvents"].size(), 401u);
  int complete = 0;
  for (const auto& e : doc["traceEvents"]) {
    EXPECT_TRUE(e.contains("ts"));
    EXPECT_TRUE(e.contains("pid"));
    if (e["ph"] == "X") {
      ++complete;
      EXPECT_EQ(e["name"], "nvme_read");
      EXPECT_GE(e["dur"].get<double>(), 0.0);
      EXPECT_GT(e["args"]["bytes"].get<int64_t>(), 0);
    } else {
      EXPECT_EQ(e["ph"], "C");
      EXPECT_EQ(e["args"]["loss_scale"], 1024);
    }
  }
  EXPECT_EQ(complete, 400);
  ::unlink(path.c_str());
}

TEST(Trace, WriteToMissingDirectoryNamesThePath) {
  TraceRecorder trace;
  absl::Status s = trace.write_chrome_json("/nonexistent-dir/x/trace.json");
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("/nonexistent-dir/x/trace.json"), std::string_view::npos);
}

}  // namespace
}  // namespace strata

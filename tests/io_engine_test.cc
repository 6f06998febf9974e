// IoEngine: both engines (io_uring, thread pool) run the same suite.
#include "swap/io_engine.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "swap/aligned_buffer.h"
#include "swap/thread_engine.h"
#include "swap/uring_engine.h"

namespace strata::swap {
namespace {

using ::testing::HasSubstr;

class TempDir {
 public:
  TempDir() {
    std::string tmpl = "/tmp/strata-io-test-XXXXXX";
    path_ = ::mkdtemp(tmpl.data());
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }
  std::string file(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

bool direct_io_works(const std::string& dir) {
  std::string p = dir + "/.probe";
  int fd = ::open(p.c_str(), O_RDWR | O_CREAT | O_DIRECT, 0644);
  if (fd < 0) return false;
  AlignedBuffer b(4096);
  bool ok = ::pwrite(fd, b.data(), 4096, 0) == 4096;
  ::close(fd);
  ::unlink(p.c_str());
  return ok;
}

void fill_random(char* p, size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  for (size_t i = 0; i < n; i += 8) {
    uint64_t v = rng();
    std::memcpy(p + i, &v, std::min<size_t>(8, n - i));
  }
}

class IoEngineTest : public ::testing::TestWithParam<IoEngineKind> {
 protected:
  void SetUp() override {
    if (GetParam() == IoEngineKind::kUring && io_uring_setup_errno() != 0) {
      GTEST_SKIP() << "io_uring unavailable here: " << std::strerror(-io_uring_setup_errno());
    }
    if (!direct_io_works(dir_.path())) GTEST_SKIP() << "O_DIRECT does not work in /tmp here";
  }

  std::unique_ptr<IoEngine> make(IoEngineOptions o) {
    o.kind = GetParam();
    auto e = make_io_engine(o);
    EXPECT_TRUE(e.ok()) << e.status();
    return e.ok() ? std::move(*e) : nullptr;
  }

  TempDir dir_;
};

TEST_P(IoEngineTest, ReportsKindAndReason) {
  auto e = make({});
  ASSERT_NE(e, nullptr);
  EXPECT_EQ(e->name(), GetParam() == IoEngineKind::kUring ? "io_uring" : "threads");
  EXPECT_FALSE(e->selection_reason().empty());
}

TEST_P(IoEngineTest, RoundTripOddSizeSplitIntoBlocks) {
  IoEngineOptions o;
  o.block_size = 64 << 10;  // 3 MiB + 12 KiB -> 49 pieces, the last one short
  o.queue_depth = 4;
  auto e = make(o);
  ASSERT_NE(e, nullptr);
  auto f = e->open(dir_.file("a.bin"), {.create = true});
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_TRUE(e->is_direct(*f));
  const size_t n = (3 << 20) + 12288;
  AlignedBuffer out(n), in(n);
  fill_random(out.data(), n, 1);
  ASSERT_TRUE(e->write(*f, 8192, out.data(), n).ok());
  ASSERT_TRUE(e->read(*f, 8192, in.data(), n).ok());
  EXPECT_EQ(std::memcmp(out.data(), in.data(), n), 0);
  auto size = e->size(*f);
  ASSERT_TRUE(size.ok());
  EXPECT_EQ(*size, 8192 + n);
  EXPECT_TRUE(e->close(*f).ok());
}

TEST_P(IoEngineTest, SingleSubmitAndSqpollRoundTrip) {
  for (bool sqpoll : {false, true}) {
    IoEngineOptions o;
    o.block_size = 64 << 10;
    o.single_submit = !sqpoll;
    o.use_sqpoll = sqpoll;
    o.kind = GetParam();
    auto e = make_io_engine(o);
    if (!e.ok() && sqpoll) {
      GTEST_SKIP() << "SQPOLL not permitted here: " << e.status();
    }
    ASSERT_TRUE(e.ok()) << e.status();
    auto f = (*e)->open(dir_.file("sq.bin"), {.create = true});
    ASSERT_TRUE(f.ok());
    const size_t n = 1 << 20;
    AlignedBuffer out(n), in(n);
    fill_random(out.data(), n, sqpoll ? 11 : 12);
    ASSERT_TRUE((*e)->write(*f, 0, out.data(), n).ok());
    ASSERT_TRUE((*e)->read(*f, 0, in.data(), n).ok());
    EXPECT_EQ(std::memcmp(out.data(), in.data(), n), 0) << "sqpoll " << sqpoll;
  }
}

TEST_P(IoEngineTest, RegisteredBufferRoundTrip) {
  IoEngineOptions o;
  o.block_size = 128 << 10;
  auto e = make(o);
  ASSERT_NE(e, nullptr);
  auto f = e->open(dir_.file("fixed.bin"), {.create = true});
  ASSERT_TRUE(f.ok());
  const size_t n = 1 << 20;
  AlignedBuffer out(n), in(n);
  ASSERT_TRUE(e->register_buffer(out.data(), out.size()).ok());
  ASSERT_TRUE(e->register_buffer(in.data(), in.size()).ok());
  fill_random(out.data(), n, 2);
  ASSERT_TRUE(e->write(*f, 0, out.data(), n).ok());
  ASSERT_TRUE(e->read(*f, 0, in.data(), n).ok());
  EXPECT_EQ(std::memcmp(out.data(), in.data(), n), 0);
  EXPECT_TRUE(e->unregister_buffer(in.data()).ok());
  EXPECT_TRUE(e->unregister_buffer(out.data()).ok());
}

// Property test: random sizes and offsets, several submitting threads, many
// requests in flight at once; every byte comes back.
TEST_P(IoEngineTest, ConcurrentRandomRequestsFromSeveralThreads) {
  IoEngineOptions o;
  o.block_size = 32 << 10;
  o.queue_depth = 8;
  auto e = make(o);
  ASSERT_NE(e, nullptr);
  auto f = e->open(dir_.file("many.bin"), {.create = true});
  ASSERT_TRUE(f.ok());
  constexpr int kThreads = 4, kPerThread = 24;
  constexpr size_t kRegion = 256 << 10;  // each request owns one region
  std::vector<AlignedBuffer> out, in;
  std::vector<size_t> lengths;
  std::mt19937 rng(7);
  for (int i = 0; i < kThreads * kPerThread; ++i) {
    size_t len = 4096 * (1 + rng() % (kRegion / 4096));
    lengths.push_back(len);
    out.emplace_back(len);
    in.emplace_back(len);
    fill_random(out.back().data(), len, 100 + i);
  }
  auto run = [&](IoOp op) {
    std::vector<std::thread> threads;
    std::atomic<int> failures{0};
    for (int t = 0; t < kThreads; ++t) {
      threads.emplace_back([&, t] {
        std::vector<Ticket> tickets;
        for (int k = 0; k < kPerThread; ++k) {
          int i = t * kPerThread + k;
          void* buf = op == IoOp::kWrite ? out[i].data() : in[i].data();
          auto tk = e->submit({op, *f, i * kRegion, buf, lengths[i], {}});
          if (!tk.ok()) {
            ++failures;
            continue;
          }
          tickets.push_back(*tk);
        }
        for (size_t k = 0; k < tickets.size(); ++k) {
          // Alternate poll and wait to exercise both.
          if (k % 2 == 0) {
            std::optional<absl::Status> s;
            while (!(s = e->poll(tickets[k]))) std::this_thread::yield();
            if (!s->ok()) ++failures;
          } else if (!e->wait(tickets[k]).ok()) {
            ++failures;
          }
        }
      });
    }
    for (auto& th : threads) th.join();
    return failures.load();
  };
  EXPECT_EQ(run(IoOp::kWrite), 0);
  EXPECT_EQ(run(IoOp::kRead), 0);
  for (size_t i = 0; i < out.size(); ++i) {
    ASSERT_EQ(std::memcmp(out[i].data(), in[i].data(), lengths[i]), 0) << "request " << i;
  }
}

TEST_P(IoEngineTest, DetachedCallbacksRunOnceAndDrainWaits) {
  auto e = make({.block_size = 16 << 10, .queue_depth = 2});
  ASSERT_NE(e, nullptr);
  auto f = e->open(dir_.file("cb.bin"), {.create = true});
  ASSERT_TRUE(f.ok());
  AlignedBuffer buf(1 << 20);
  std::atomic<int> ok{0}, calls{0};
  for (int i = 0; i < 8; ++i) {
    auto t = e->submit({IoOp::kWrite, *f, static_cast<uint64_t>(i) << 20, buf.data(), buf.size(),
                        [&](const absl::Status& s) {
                          ++calls;
                          if (s.ok()) ++ok;
                        }});
    ASSERT_TRUE(t.ok());
    EXPECT_EQ(*t, kNoTicket);
  }
  ASSERT_TRUE(e->drain().ok());
  EXPECT_EQ(calls.load(), 8);
  EXPECT_EQ(ok.load(), 8);
  EXPECT_FALSE(e->wait(12345).ok());  // unknown ticket
}

TEST_P(IoEngineTest, StripesOverTwoDirectories) {
  TempDir second;
  IoEngineOptions o;
  o.block_size = 64 << 10;
  o.paths = {dir_.path(), second.path()};
  auto e = make(o);
  ASSERT_NE(e, nullptr);
  auto paths = stripe_paths(o, "s.bin");
  ASSERT_EQ(paths.size(), 2u);
  auto f = e->open(paths, {.create = true});
  ASSERT_TRUE(f.ok()) << f.status();
  const size_t n = (5 * 64 + 4) << 10;  // 5 full stripe units + 4 KiB
  AlignedBuffer out(n), in(n);
  fill_random(out.data(), n, 3);
  ASSERT_TRUE(e->write(*f, 0, out.data(), n).ok());
  ASSERT_TRUE(e->read(*f, 0, in.data(), n).ok());
  EXPECT_EQ(std::memcmp(out.data(), in.data(), n), 0);
  // RAID-0: units 0,2,4 on the first path, 1,3 and the 4 KiB tail on the second.
  EXPECT_EQ(std::filesystem::file_size(paths[0]), 3u * (64 << 10));
  EXPECT_EQ(std::filesystem::file_size(paths[1]), 2u * (64 << 10) + 4096);
  std::string unit1(64 << 10, '\0');
  int fd = ::open(paths[1].c_str(), O_RDONLY);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::pread(fd, unit1.data(), unit1.size(), 0), static_cast<ssize_t>(unit1.size()));
  ::close(fd);
  EXPECT_EQ(std::memcmp(unit1.data(), out.data() + (64 << 10), unit1.size()), 0);
  auto size = e->size(*f);
  ASSERT_TRUE(size.ok());
  EXPECT_EQ(*size, n);
}

TEST_P(IoEngineTest, UnalignedDirectRequestIsRejectedWithReason) {
  auto e = make({});
  ASSERT_NE(e, nullptr);
  auto f = e->open(dir_.file("u.bin"), {.create = true});
  ASSERT_TRUE(f.ok());
  AlignedBuffer buf(16384);
  auto s = e->submit({IoOp::kWrite, *f, 0, buf.data() + 1, 4096, {}});
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.status().message()), HasSubstr("O_DIRECT"));
  EXPECT_THAT(std::string(s.status().message()), HasSubstr(dir_.file("u.bin")));
  s = e->submit({IoOp::kWrite, *f, 100, buf.data(), 4096, {}});
  EXPECT_FALSE(s.ok());
  s = e->submit({IoOp::kWrite, *f, 0, buf.data(), 1000, {}});
  EXPECT_FALSE(s.ok());
}

TEST_P(IoEngineTest, ReadPastEndOfFileNamesFileAndOffset) {
  auto e = make({});
  ASSERT_NE(e, nullptr);
  auto f = e->open(dir_.file("short.bin"), {.create = true});
  ASSERT_TRUE(f.ok());
  AlignedBuffer buf(8192);
  ASSERT_TRUE(e->write(*f, 0, buf.data(), 4096).ok());
  absl::Status s = e->read(*f, 0, buf.data(), 8192);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.code(), absl::StatusCode::kOutOfRange);
  EXPECT_THAT(std::string(s.message()), HasSubstr(dir_.file("short.bin")));
  EXPECT_THAT(std::string(s.message()), HasSubstr("offset 4096"));
}

TEST_P(IoEngineTest, BadPathIsNamed) {
  auto e = make({});
  ASSERT_NE(e, nullptr);
  auto f = e->open(dir_.path() + "/no/such/dir/x.swp", {.create = true});
  ASSERT_FALSE(f.ok());
  EXPECT_EQ(f.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(f.status().message()), HasSubstr("/no/such/dir/x.swp"));
  EXPECT_FALSE(e->submit({IoOp::kRead, 42, 0, nullptr, 0, {}}).ok());
}

TEST_P(IoEngineTest, CloseWithRequestsInFlightIsRefused) {
  auto e = make({.block_size = 4096, .queue_depth = 1});
  ASSERT_NE(e, nullptr);
  auto f = e->open(dir_.file("c.bin"), {.create = true});
  ASSERT_TRUE(f.ok());
  AlignedBuffer buf(4 << 20);
  auto t = e->submit({IoOp::kWrite, *f, 0, buf.data(), buf.size(), {}});
  ASSERT_TRUE(t.ok());
  // 1024 pieces at depth 1: normally still running. If the machine was fast
  // enough to finish first, the close is legitimately accepted.
  absl::Status c = e->close(*f);
  if (!c.ok()) {
    EXPECT_EQ(c.code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_THAT(std::string(c.message()), HasSubstr("in flight"));
  }
  EXPECT_TRUE(e->wait(*t).ok());
  if (!c.ok()) {
    EXPECT_TRUE(e->close(*f).ok());
  }
}

// Shutdown with requests queued and in the kernel: every request reports
// exactly once (OK or Cancelled), nothing is leaked (ASan build), and the
// engine refuses new work afterwards.
TEST_P(IoEngineTest, ShutdownWithRequestsInFlight) {
  auto e = make({.block_size = 16 << 10, .queue_depth = 2});
  ASSERT_NE(e, nullptr);
  auto f = e->open(dir_.file("sd.bin"), {.create = true});
  ASSERT_TRUE(f.ok());
  AlignedBuffer buf(8 << 20);
  std::vector<Ticket> tickets;
  std::atomic<int> callbacks{0};
  for (int i = 0; i < 8; ++i) {
    auto t = e->submit(
        {IoOp::kWrite, *f, static_cast<uint64_t>(i) << 20, buf.data() + (i << 20), 1 << 20, {}});
    ASSERT_TRUE(t.ok());
    tickets.push_back(*t);
    ASSERT_TRUE(e->submit({IoOp::kWrite, *f, static_cast<uint64_t>(8 + i) << 20, buf.data(),
                           1 << 20, [&](const absl::Status&) { ++callbacks; }})
                    .ok());
  }
  e->shutdown();
  EXPECT_EQ(callbacks.load(), 8);
  for (Ticket t : tickets) {
    absl::Status s = e->wait(t);
    EXPECT_TRUE(s.ok() || s.code() == absl::StatusCode::kCancelled) << s;
  }
  auto late = e->submit({IoOp::kRead, *f, 0, buf.data(), 4096, {}});
  EXPECT_EQ(late.status().code(), absl::StatusCode::kCancelled);
  e->shutdown();  // idempotent
}

TEST_P(IoEngineTest, DestroyWithDetachedRequestsInFlight) {
  std::atomic<int> callbacks{0};
  AlignedBuffer buf(2 << 20);
  {
    auto e = make({.block_size = 16 << 10, .queue_depth = 2});
    ASSERT_NE(e, nullptr);
    auto f = e->open(dir_.file("d.bin"), {.create = true});
    ASSERT_TRUE(f.ok());
    for (int i = 0; i < 4; ++i) {
      ASSERT_TRUE(e->submit({IoOp::kWrite, *f, static_cast<uint64_t>(i) << 21, buf.data(),
                             buf.size(), [&](const absl::Status&) { ++callbacks; }})
                      .ok());
    }
  }  // destructor: shutdown with pieces queued and in flight
  EXPECT_EQ(callbacks.load(), 4);
}

// The watchdog names the stuck request. A read from an empty FIFO never
// completes until someone writes, which stands in for a hung device.
TEST(IoEngineWatchdogTest, StuckRequestIsNamedThenCompletes) {
  if (io_uring_setup_errno() != 0) GTEST_SKIP() << "io_uring unavailable";
  TempDir dir;
  const std::string fifo = dir.file("stuck.fifo");
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0644), 0);
  IoEngineOptions o;
  o.kind = IoEngineKind::kUring;
  o.allow_buffered = true;
  o.watchdog_timeout = std::chrono::milliseconds(200);
  auto e = make_io_engine(o);
  ASSERT_TRUE(e.ok());
  auto f = (*e)->open(fifo, {});
  ASSERT_TRUE(f.ok()) << f.status();
  AlignedBuffer buf(4096);
  auto t = (*e)->submit({IoOp::kRead, *f, 0, buf.data(), 4096, {}});
  ASSERT_TRUE(t.ok());
  absl::Status s = (*e)->wait(*t);
  if (s.code() != absl::StatusCode::kDeadlineExceeded) {
    GTEST_SKIP() << "this kernel does not block io_uring reads on a FIFO: " << s;
  }
  EXPECT_THAT(std::string(s.message()), HasSubstr(fifo));
  EXPECT_THAT(std::string(s.message()), HasSubstr("offset 0 length 4096"));
  EXPECT_THAT(std::string(s.message()), HasSubstr("watchdog"));
  // Unstick it: the same ticket then completes.
  int w = ::open(fifo.c_str(), O_WRONLY | O_NONBLOCK);
  ASSERT_GE(w, 0);
  std::string data(4096, 'z');
  ASSERT_EQ(::write(w, data.data(), data.size()), 4096);
  ::close(w);
  EXPECT_TRUE((*e)->wait(*t).ok());
  EXPECT_EQ(buf.data()[0], 'z');
}

// `strata bench io --json`: exactly one JSON object on stdout, striping over
// two directories, both engines.
TEST(BenchIoCommandTest, JsonOverTwoPaths) {
  if (::access(STRATA_STRATA_BINARY, X_OK) != 0) {
    GTEST_SKIP() << "strata binary not built yet: " << STRATA_STRATA_BINARY;
  }
  TempDir a, b;
  if (!direct_io_works(a.path())) GTEST_SKIP() << "O_DIRECT does not work in /tmp here";
  for (const char* engine : {"threads", "uring"}) {
    if (std::string(engine) == "uring" && io_uring_setup_errno() != 0) continue;
    std::string out_file = a.file("out.json");
    std::string cmd = std::string("'") + STRATA_STRATA_BINARY + "' bench io --path " + a.path() +
                      "," + b.path() + " --size 4M --block-size 256K --queue-depth 4 --no-fio " +
                      "--json --engine " + engine + " >" + out_file + " 2>/dev/null";
    ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
    std::ifstream in(out_file);
    auto j = nlohmann::json::parse(in);
    EXPECT_EQ(j["paths"].size(), 2u);
    EXPECT_EQ(j["engine"], std::string(engine) == "uring" ? "io_uring" : "threads");
    EXPECT_EQ(j["write"]["bytes"], 4u << 20);
    EXPECT_GT(j["read"]["gb_per_s"].get<double>(), 0.0);
    EXPECT_GT(j["read"]["iops"].get<double>(), 0.0);
    EXPECT_TRUE(j.contains("reason"));
    // The bench file is removed afterwards.
    EXPECT_FALSE(std::filesystem::exists(b.file("strata-bench-io.dat")));
  }
  std::string bad =
      std::string("'") + STRATA_STRATA_BINARY + "' bench io --path /tmp --size 12Q >/dev/null 2>&1";
  EXPECT_EQ(WEXITSTATUS(std::system(bad.c_str())), 2);  // usage error
}

INSTANTIATE_TEST_SUITE_P(Engines, IoEngineTest,
                         ::testing::Values(IoEngineKind::kUring, IoEngineKind::kThreads),
                         [](const auto& info) {
                           return std::string(io_engine_kind_name(info.param));
                         });

TEST(IoEngineOptionsTest, ValidateNamesTheKey) {
  IoEngineOptions o;
  o.block_size = 1000;
  absl::Status s = validate(o);
  EXPECT_THAT(std::string(s.message()), HasSubstr("block_size"));
  o = {};
  o.queue_depth = 0;
  EXPECT_THAT(std::string(validate(o).message()), HasSubstr("queue_depth"));
  EXPECT_TRUE(validate(IoEngineOptions{}).ok());
  EXPECT_FALSE(make_io_engine(o).ok());
}

TEST(IoEngineOptionsTest, ParsesKindsAndPaths) {
  EXPECT_EQ(*parse_io_engine_kind("uring"), IoEngineKind::kUring);
  EXPECT_EQ(*parse_io_engine_kind("threads"), IoEngineKind::kThreads);
  EXPECT_FALSE(parse_io_engine_kind("aio").ok());
  EXPECT_EQ(split_paths("/a,/b,,/c"), (std::vector<std::string>{"/a", "/b", "/c"}));
  IoEngineOptions o;
  EXPECT_EQ(stripe_paths(o, "/x/f"), std::vector<std::string>{"/x/f"});
  o.paths = {"/a", "/b"};
  EXPECT_EQ(stripe_paths(o, "f"), (std::vector<std::string>{"/a/f", "/b/f"}));
}

TEST(IoEngineAutoTest, AutoPicksUringWhenAvailable) {
  auto e = make_io_engine({});
  ASSERT_TRUE(e.ok());
  if (io_uring_setup_errno() == 0) {
    EXPECT_EQ((*e)->name(), "io_uring");
  } else {
    EXPECT_EQ((*e)->name(), "threads");
  }
  EXPECT_FALSE((*e)->selection_reason().empty());
}

// A filesystem that refuses O_DIRECT: an error naming the path, or buffered
// I/O when allowed. Needs such a filesystem (tmpfs before Linux 6.6).
TEST(IoEngineDirectTest, NoDirectIoFilesystem) {
  const std::string dir = "/dev/shm";
  if (!std::filesystem::is_directory(dir)) GTEST_SKIP() << "no /dev/shm";
  std::string probe = dir + "/strata-direct-probe";
  int fd = ::open(probe.c_str(), O_RDWR | O_CREAT | O_DIRECT, 0644);
  if (fd >= 0) {
    ::close(fd);
    ::unlink(probe.c_str());
    GTEST_SKIP() << "/dev/shm accepts O_DIRECT on this kernel; no filesystem without it to test";
  }
  auto e = make_io_engine({.kind = IoEngineKind::kThreads});
  ASSERT_TRUE(e.ok());
  auto f = (*e)->open(probe, {.create = true});
  ASSERT_FALSE(f.ok());
  EXPECT_THAT(std::string(f.status().message()), HasSubstr(probe));
  EXPECT_THAT(std::string(f.status().message()), HasSubstr("allow_buffered"));
  auto b = make_io_engine({.allow_buffered = true, .kind = IoEngineKind::kThreads});
  ASSERT_TRUE(b.ok());
  auto g = (*b)->open(probe, {.create = true});
  ASSERT_TRUE(g.ok()) << g.status();
  EXPECT_FALSE((*b)->is_direct(*g));
  char small[100] = "hello";
  EXPECT_TRUE((*b)->write(*g, 3, small, sizeof(small)).ok());  // no alignment needed
  ::unlink(probe.c_str());
}

}  // namespace
}  // namespace strata::swap

// SwapFile: round trips, and every way a file can be damaged is reported
// with the file and the offset, never as garbage.
#include "swap/swap_file.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <future>
#include <map>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "swap/aligned_buffer.h"
#include "xxhash.h"

namespace strata::swap {
namespace {

using ::testing::HasSubstr;

class SwapFileTest : public ::testing::TestWithParam<IoEngineKind> {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/strata-swap-test-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    if (GetParam() == IoEngineKind::kUring && io_uring_setup_errno() != 0) {
      GTEST_SKIP() << "io_uring unavailable: " << std::strerror(-io_uring_setup_errno());
    }
    IoEngineOptions o;
    o.kind = GetParam();
    o.block_size = 64 << 10;
    o.queue_depth = 4;
    o.allow_buffered = true;  // the format does not depend on O_DIRECT
    auto e = make_io_engine(o);
    ASSERT_TRUE(e.ok()) << e.status();
    engine_ = std::move(*e);
    path_ = dir_ + "/t.swp";
  }
  void TearDown() override {
    engine_.reset();
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }

  static std::vector<TensorSpec> specs() {
    return {{"layer0.master", DType::kFloat32, 100000},
            {"layer0.exp_avg", DType::kFloat32, 1024},
            {"layer1.param16", DType::kBFloat16, 3333},
            {"odd", DType::kFloat16, 1}};
  }

  static AlignedBuffer random_bytes(size_t n, uint64_t seed) {
    AlignedBuffer b(n);
    std::mt19937_64 rng(seed);
    for (size_t i = 0; i < b.size(); ++i) b.data()[i] = static_cast<char>(rng());
    return b;
  }

  // Creates, writes every tensor, commits. Returns the data written.
  std::vector<AlignedBuffer> write_all() {
    auto f = SwapFile::create(*engine_, {path_}, specs());
    EXPECT_TRUE(f.ok()) << f.status();
    std::vector<AlignedBuffer> data;
    uint64_t seed = 1;
    for (const TensorExtent& e : (*f)->tensors()) {
      data.push_back(random_bytes(e.capacity, seed++));
      EXPECT_TRUE((*f)->write_tensor(e.name, data.back().data(), data.back().size()).ok());
    }
    EXPECT_TRUE((*f)->commit().ok());
    return data;
  }

  void flip_byte(uint64_t offset) {
    int fd = ::open(path_.c_str(), O_RDWR);
    ASSERT_GE(fd, 0);
    char c;
    ASSERT_EQ(::pread(fd, &c, 1, static_cast<off_t>(offset)), 1);
    c = static_cast<char>(c ^ 0x5a);
    ASSERT_EQ(::pwrite(fd, &c, 1, static_cast<off_t>(offset)), 1);
    ::close(fd);
  }

  std::string dir_;
  std::string path_;
  std::unique_ptr<IoEngine> engine_;
};

TEST_P(SwapFileTest, RoundTripAfterReopen) {
  auto data = write_all();
  auto f = SwapFile::open(*engine_, {path_});
  ASSERT_TRUE(f.ok()) << f.status();
  ASSERT_EQ((*f)->tensors().size(), 4u);
  size_t i = 0;
  for (const TensorExtent& e : (*f)->tensors()) {
    EXPECT_EQ(e.offset % 4096, 0u) << e.name;
    EXPECT_EQ(e.length, e.numel * dtype_size(e.dtype));
    AlignedBuffer in(e.capacity);
    ASSERT_TRUE((*f)->read_tensor(e.name, in.data(), in.size()).ok()) << e.name;
    EXPECT_EQ(std::memcmp(in.data(), data[i].data(), e.length), 0) << e.name;
    ++i;
  }
  auto odd = (*f)->find("odd");
  ASSERT_TRUE(odd.ok());
  EXPECT_EQ(odd->dtype, DType::kFloat16);
  EXPECT_EQ(odd->length, 2u);
  EXPECT_FALSE((*f)->find("nope").ok());
}

TEST_P(SwapFileTest, ConcurrentTensorWritesAndReads) {
  std::vector<TensorSpec> many;
  for (int i = 0; i < 32; ++i)
    many.push_back({absl::StrCat("t", i), DType::kFloat32, 1000u + 517u * i});
  auto f = SwapFile::create(*engine_, {path_}, many);
  ASSERT_TRUE(f.ok()) << f.status();
  std::vector<AlignedBuffer> data;
  for (int i = 0; i < 32; ++i) data.push_back(random_bytes((*f)->tensors()[i].capacity, i));
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = t; i < 32; i += 4) {
        if (!(*f)->write_tensor(many[i].name, data[i].data(), data[i].size()).ok()) ++failures;
      }
      for (int i = t; i < 32; i += 4) {
        AlignedBuffer in(data[i].size());
        if (!(*f)->read_tensor(many[i].name, in.data(), in.size()).ok() ||
            std::memcmp(in.data(), data[i].data(), many[i].numel * 4) != 0) {
          ++failures;
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(failures.load(), 0);
}

TEST_P(SwapFileTest, FlippedByteInExtentIsDetected) {
  write_all();
  auto f = SwapFile::open(*engine_, {path_});
  ASSERT_TRUE(f.ok());
  TensorExtent e = *(*f)->find("layer1.param16");
  flip_byte(e.offset + 100);
  AlignedBuffer in(e.capacity);
  absl::Status s = (*f)->read_tensor(e.name, in.data(), in.size());
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(std::string(s.message()), HasSubstr(path_));
  EXPECT_THAT(std::string(s.message()), HasSubstr("offset " + std::to_string(e.offset)));
  EXPECT_THAT(std::string(s.message()), HasSubstr("checksum mismatch"));
  // Other tensors are still readable.
  TensorExtent other = *(*f)->find("layer0.master");
  AlignedBuffer ok(other.capacity);
  EXPECT_TRUE((*f)->read_tensor(other.name, ok.data(), ok.size()).ok());
}

TEST_P(SwapFileTest, AsyncReadsRunConcurrentlyAndVerify) {
  auto data = write_all();
  auto f = SwapFile::open(*engine_, {path_});
  ASSERT_TRUE(f.ok());
  TensorExtent bad = *(*f)->find("layer0.exp_avg");
  flip_byte(bad.offset + 5);
  std::vector<AlignedBuffer> in;
  for (const TensorExtent& e : (*f)->tensors()) in.emplace_back(e.capacity);
  std::mutex mu;
  std::map<std::string, absl::Status> results;
  for (size_t i = 0; i < in.size(); ++i) {
    const std::string name = (*f)->tensors()[i].name;
    ASSERT_TRUE((*f)->read_tensor_async(name, in[i].data(), in[i].size(),
                                        [&, name](const absl::Status& s) {
                                          std::lock_guard lock(mu);
                                          results[name] = s;
                                        })
                    .ok());
  }
  ASSERT_TRUE(engine_->drain().ok());
  ASSERT_EQ(results.size(), in.size());
  for (size_t i = 0; i < in.size(); ++i) {
    const TensorExtent e = (*f)->tensors()[i];
    if (e.name == bad.name) {
      EXPECT_EQ(results[e.name].code(), absl::StatusCode::kDataLoss);
      EXPECT_THAT(std::string(results[e.name].message()),
                  HasSubstr("offset " + std::to_string(bad.offset)));
    } else {
      EXPECT_TRUE(results[e.name].ok()) << results[e.name];
      EXPECT_EQ(std::memcmp(in[i].data(), data[i].data(), e.length), 0) << e.name;
    }
  }
}

TEST_P(SwapFileTest, ChecksumsCanBeTurnedOff) {
  write_all();
  auto f = SwapFile::open(*engine_, {path_}, {.checksums = false});
  ASSERT_TRUE(f.ok());
  TensorExtent e = *(*f)->find("odd");
  flip_byte(e.offset);
  AlignedBuffer in(e.capacity);
  EXPECT_TRUE((*f)->read_tensor(e.name, in.data(), in.size()).ok());
}

TEST_P(SwapFileTest, FlippedByteInHeaderIsDetected) {
  write_all();
  flip_byte(20);
  auto f = SwapFile::open(*engine_, {path_});
  ASSERT_FALSE(f.ok());
  EXPECT_EQ(f.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(std::string(f.status().message()), HasSubstr(path_));
  EXPECT_THAT(std::string(f.status().message()), HasSubstr("offset 0"));
}

// The checksum is verified before any field is read: a flipped version byte
// is a torn header, not "unsupported version".
TEST_P(SwapFileTest, CorruptVersionIsAChecksumMismatch) {
  write_all();
  flip_byte(16);  // the version field
  auto f = SwapFile::open(*engine_, {path_});
  ASSERT_FALSE(f.ok());
  EXPECT_EQ(f.status().code(), absl::StatusCode::kDataLoss) << f.status();
  EXPECT_THAT(std::string(f.status().message()), HasSubstr("checksum mismatch"));
  EXPECT_THAT(std::string(f.status().message()), ::testing::Not(HasSubstr("version")));
}

TEST_P(SwapFileTest, Version1FileIsNamedAsSuch) {
  std::string v1(4096, '\0');
  std::memcpy(v1.data(), kSwapMagic, 8);
  const uint32_t one = 1;
  std::memcpy(v1.data() + 8, &one, 4);
  const uint64_t sum = XXH3_64bits(v1.data(), 48);
  std::memcpy(v1.data() + 48, &sum, 8);
  int fd = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::write(fd, v1.data(), v1.size()), static_cast<ssize_t>(v1.size()));
  ::close(fd);
  auto f = SwapFile::open(*engine_, {path_});
  ASSERT_FALSE(f.ok());
  EXPECT_EQ(f.status().code(), absl::StatusCode::kFailedPrecondition) << f.status();
  EXPECT_THAT(std::string(f.status().message()), HasSubstr("format version 1"));
}

TEST_P(SwapFileTest, FlippedByteInTableIsDetected) {
  write_all();
  flip_byte(kSwapLabelBytes + 10);  // one path: the table follows the 4 KiB label
  auto f = SwapFile::open(*engine_, {path_});
  ASSERT_FALSE(f.ok());
  EXPECT_THAT(std::string(f.status().message()), HasSubstr("table checksum mismatch"));
}

TEST_P(SwapFileTest, TruncatedFileIsDetected) {
  write_all();
  const auto full = std::filesystem::file_size(path_);
  std::filesystem::resize_file(path_, full - 8192);
  auto f = SwapFile::open(*engine_, {path_});
  ASSERT_FALSE(f.ok());
  EXPECT_EQ(f.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(std::string(f.status().message()), HasSubstr("truncated"));
  EXPECT_THAT(std::string(f.status().message()), HasSubstr(std::to_string(full - 8192)));
  std::filesystem::resize_file(path_, 100);
  f = SwapFile::open(*engine_, {path_});
  ASSERT_FALSE(f.ok());
  EXPECT_THAT(std::string(f.status().message()), HasSubstr("truncated"));
}

TEST_P(SwapFileTest, ForeignFileIsRejected) {
  {
    std::string junk(16384, 'x');
    int fd = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(::write(fd, junk.data(), junk.size()), static_cast<ssize_t>(junk.size()));
    ::close(fd);
  }
  auto f = SwapFile::open(*engine_, {path_});
  ASSERT_FALSE(f.ok());
  EXPECT_THAT(std::string(f.status().message()), HasSubstr("not a strata swap file"));
  EXPECT_THAT(std::string(f.status().message()), HasSubstr(path_));
}

TEST_P(SwapFileTest, UncommittedAndDirtyFilesAreDetected) {
  {
    auto f = SwapFile::create(*engine_, {path_}, specs());
    ASSERT_TRUE(f.ok());
  }  // never committed: a crash during creation
  auto f = SwapFile::open(*engine_, {path_});
  ASSERT_FALSE(f.ok());
  EXPECT_THAT(std::string(f.status().message()), HasSubstr("never committed"));

  auto data = write_all();
  {
    auto g = SwapFile::open(*engine_, {path_});
    ASSERT_TRUE(g.ok());
    // An update that never reaches commit(): the header says so.
    ASSERT_TRUE((*g)->write_tensor("odd", data[3].data(), data[3].size()).ok());
  }
  f = SwapFile::open(*engine_, {path_});
  ASSERT_FALSE(f.ok());
  EXPECT_THAT(std::string(f.status().message()), HasSubstr("never committed"));
  EXPECT_THAT(std::string(f.status().message()), HasSubstr("being updated"));
}

TEST_P(SwapFileTest, UpdateThenCommitReopens) {
  auto data = write_all();
  auto g = SwapFile::open(*engine_, {path_});
  ASSERT_TRUE(g.ok());
  AlignedBuffer fresh = random_bytes(data[1].size(), 99);
  ASSERT_TRUE((*g)->write_tensor("layer0.exp_avg", fresh.data(), fresh.size()).ok());
  ASSERT_TRUE((*g)->commit().ok());
  g->reset();
  auto f = SwapFile::open(*engine_, {path_});
  ASSERT_TRUE(f.ok()) << f.status();
  AlignedBuffer in(fresh.size());
  ASSERT_TRUE((*f)->read_tensor("layer0.exp_avg", in.data(), in.size()).ok());
  EXPECT_EQ(std::memcmp(in.data(), fresh.data(), 1024 * 4), 0);
}

TEST_P(SwapFileTest, StripedOverTwoPaths) {
  std::string second = dir_ + "/b";
  std::filesystem::create_directory(second);
  std::vector<std::string> paths = {dir_ + "/s0.swp", second + "/s1.swp"};
  std::vector<TensorSpec> t = {{"big", DType::kFloat32, 200000}, {"small", DType::kFloat16, 10}};
  AlignedBuffer big = random_bytes(800768, 5), small = random_bytes(4096, 6);
  {
    auto f = SwapFile::create(*engine_, paths, t);
    ASSERT_TRUE(f.ok()) << f.status();
    ASSERT_TRUE((*f)->write_tensor("big", big.data(), big.size()).ok());
    ASSERT_TRUE((*f)->write_tensor("small", small.data(), small.size()).ok());
    ASSERT_TRUE((*f)->commit().ok());
  }
  EXPECT_GT(std::filesystem::file_size(paths[1]), 0u);
  auto f = SwapFile::open(*engine_, paths);
  ASSERT_TRUE(f.ok()) << f.status();
  AlignedBuffer in(big.size());
  ASSERT_TRUE((*f)->read_tensor("big", in.data(), in.size()).ok());
  EXPECT_EQ(std::memcmp(in.data(), big.data(), 800000), 0);
}

// Reopening with the stripe paths reordered, fewer of them, a member of
// another file, or another block size is refused, never misread.
TEST_P(SwapFileTest, ReopenWithAnotherStripeLayoutIsRefused) {
  std::string second = dir_ + "/b";
  std::filesystem::create_directory(second);
  const std::vector<std::string> paths = {dir_ + "/s0.swp", second + "/s1.swp"};
  const std::vector<TensorSpec> t = {{"big", DType::kFloat32, 200000}};
  AlignedBuffer big = random_bytes(800768, 5);
  uint64_t run_id = 0;
  {
    auto f = SwapFile::create(*engine_, paths, t);
    ASSERT_TRUE(f.ok()) << f.status();
    run_id = (*f)->run_id();
    EXPECT_NE(run_id, 0u);
    ASSERT_TRUE((*f)->write_tensor("big", big.data(), big.size()).ok());
    ASSERT_TRUE((*f)->commit().ok());
  }
  auto expect_refused = [](const absl::StatusOr<std::unique_ptr<SwapFile>>& f,
                           const std::string& what) {
    ASSERT_FALSE(f.ok()) << "reopened with " << what;
    EXPECT_EQ(f.status().code(), absl::StatusCode::kFailedPrecondition) << f.status();
  };
  auto reversed = SwapFile::open(*engine_, {paths[1], paths[0]});
  expect_refused(reversed, "the paths reversed");
  EXPECT_THAT(std::string(reversed.status().message()), HasSubstr("order"));
  auto fewer = SwapFile::open(*engine_, {paths[0]});
  expect_refused(fewer, "one path of two");
  EXPECT_THAT(std::string(fewer.status().message()), HasSubstr("2 path(s)"));

  IoEngineOptions o = engine_->options();
  o.block_size = 2 * o.block_size;
  auto other_engine = make_io_engine(o);
  ASSERT_TRUE(other_engine.ok()) << other_engine.status();
  auto wider = SwapFile::open(**other_engine, paths);
  expect_refused(wider, "another block size");
  EXPECT_THAT(std::string(wider.status().message()), HasSubstr("block_size 65536"));

  // A second member taken from another file over the same directories.
  const std::vector<std::string> other = {dir_ + "/o0.swp", second + "/o1.swp"};
  {
    auto g = SwapFile::create(*engine_, other, t);
    ASSERT_TRUE(g.ok()) << g.status();
    ASSERT_TRUE((*g)->commit().ok());
  }
  auto mixed = SwapFile::open(*engine_, {paths[0], other[1]});
  expect_refused(mixed, "a member of another file");
  EXPECT_THAT(std::string(mixed.status().message()), HasSubstr(other[1]));

  auto same = SwapFile::open(*engine_, paths);
  ASSERT_TRUE(same.ok()) << same.status();
  EXPECT_EQ((*same)->run_id(), run_id);
  AlignedBuffer in(big.size());
  ASSERT_TRUE((*same)->read_tensor("big", in.data(), in.size()).ok());
  EXPECT_EQ(std::memcmp(in.data(), big.data(), 800000), 0);
}

// commit() while a write is in flight, on an engine with one completion
// thread. commit() used to hold the file's mutex across its header I/O while
// the write's completion callback, queued ahead of that I/O on the same
// thread, waited for the mutex: a hang until the watchdog.
TEST_P(SwapFileTest, CommitWithAWriteInFlightDoesNotHang) {
  IoEngineOptions o;
  o.kind = GetParam();
  o.block_size = 64 << 10;
  o.queue_depth = 1;  // the thread engine: one worker
  o.threads = 1;
  o.allow_buffered = true;
  o.watchdog_timeout = std::chrono::seconds(5);
  auto engine = make_io_engine(o);
  ASSERT_TRUE(engine.ok()) << engine.status();
  IoEngine& io = **engine;
  auto f = SwapFile::create(io, {path_}, specs());
  ASSERT_TRUE(f.ok()) << f.status();
  std::vector<AlignedBuffer> data;
  uint64_t seed = 1;
  for (const TensorExtent& e : (*f)->tensors()) {
    data.push_back(random_bytes(e.capacity, seed++));
    ASSERT_TRUE((*f)->write_tensor(e.name, data.back().data(), data.back().size()).ok());
  }
  ASSERT_TRUE((*f)->commit().ok());
  ASSERT_TRUE((*f)->write_tensor("odd", data[3].data(), data[3].size()).ok());  // now dirty

  // Occupy the engine's completion thread until released.
  std::promise<void> release;
  std::shared_future<void> released = release.get_future().share();
  AlignedBuffer scratch(4096);
  auto blocker = io.open(dir_ + "/blocker", {.create = true});
  ASSERT_TRUE(blocker.ok()) << blocker.status();
  ASSERT_TRUE(io.submit({IoOp::kWrite, *blocker, 0, scratch.data(), 4096,
                         [released](const absl::Status&) { released.wait(); }})
                  .ok());
  AlignedBuffer fresh = random_bytes(data[0].size(), 77);
  std::promise<absl::Status> written;
  ASSERT_TRUE((*f)->write_tensor_async("layer0.master", fresh.data(), fresh.size(),
                                       [&](const absl::Status& s) { written.set_value(s); })
                  .ok());
  auto committed = std::async(std::launch::async, [&] { return (*f)->commit(); });
  std::this_thread::sleep_for(std::chrono::milliseconds(100));  // commit() is under way
  release.set_value();
  ASSERT_EQ(committed.wait_for(std::chrono::seconds(30)), std::future_status::ready)
      << "commit() hung";
  EXPECT_TRUE(committed.get().ok());
  EXPECT_TRUE(written.get_future().get().ok());
  f->reset();
  // The commit vouches for the write it waited for.
  auto g = SwapFile::open(io, {path_});
  ASSERT_TRUE(g.ok()) << g.status();
  AlignedBuffer in(fresh.size());
  ASSERT_TRUE((*g)->read_tensor("layer0.master", in.data(), in.size()).ok());
  EXPECT_EQ(std::memcmp(in.data(), fresh.data(), 100000 * 4), 0);
}

TEST_P(SwapFileTest, BadArgumentsAreNamed) {
  auto f = SwapFile::create(*engine_, {dir_ + "/missing/x.swp"}, specs());
  ASSERT_FALSE(f.ok());
  EXPECT_THAT(std::string(f.status().message()), HasSubstr(dir_ + "/missing/x.swp"));
  auto dup =
      SwapFile::create(*engine_, {path_}, {{"a", DType::kFloat32, 1}, {"a", DType::kFloat32, 2}});
  EXPECT_FALSE(dup.ok());
  auto g = SwapFile::create(*engine_, {path_}, specs());
  ASSERT_TRUE(g.ok());
  AlignedBuffer small(4096);
  absl::Status s = (*g)->write_tensor("layer0.master", small.data(), small.size());
  EXPECT_THAT(std::string(s.message()), HasSubstr("smaller than its extent"));
  AlignedBuffer in(4096);
  EXPECT_EQ((*g)->read_tensor("odd", in.data(), in.size()).code(),
            absl::StatusCode::kFailedPrecondition);
}

// ENOSPC stand-in: a file-size limit makes fallocate fail (EFBIG) just as a
// full filesystem would; the error must name the path and the bytes needed.
TEST_P(SwapFileTest, PreallocationFailureNamesPathAndBytes) {
  struct rlimit old;
  ASSERT_EQ(::getrlimit(RLIMIT_FSIZE, &old), 0);
  auto old_handler = ::signal(SIGXFSZ, SIG_IGN);
  struct rlimit small = old;
  small.rlim_cur = 1 << 20;
  ASSERT_EQ(::setrlimit(RLIMIT_FSIZE, &small), 0);
  auto f = SwapFile::create(*engine_, {path_}, {{"huge", DType::kFloat32, 4u << 20}});
  ::setrlimit(RLIMIT_FSIZE, &old);
  ::signal(SIGXFSZ, old_handler);
  ASSERT_FALSE(f.ok());
  EXPECT_THAT(std::string(f.status().message()), HasSubstr(path_));
  EXPECT_THAT(std::string(f.status().message()), HasSubstr("need "));
  EXPECT_THAT(std::string(f.status().message()), HasSubstr("bytes"));
}

INSTANTIATE_TEST_SUITE_P(Engines, SwapFileTest,
                         ::testing::Values(IoEngineKind::kUring, IoEngineKind::kThreads),
                         [](const auto& info) {
                           return std::string(io_engine_kind_name(info.param));
                         });

}  // namespace
}  // namespace strata::swap

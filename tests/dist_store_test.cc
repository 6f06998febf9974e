// The rendezvous store: set/get/wait with timeouts, hostile frames, and
// which ranks it reports dead.
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "dist/net.h"
#include "dist/store.h"
#include "gtest/gtest.h"

namespace strata::dist {
namespace {

using std::chrono::milliseconds;

class Store : public ::testing::Test {
 protected:
  void SetUp() override {
    auto server = StoreServer::start("127.0.0.1", 0);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = std::move(*server);
  }
  std::unique_ptr<StoreClient> client() {
    auto c = StoreClient::connect("127.0.0.1", server_->port(), milliseconds(2000));
    EXPECT_TRUE(c.ok()) << c.status();
    return c.ok() ? std::move(*c) : nullptr;
  }
  std::unique_ptr<StoreServer> server_;
};

TEST_F(Store, SetGetWait) {
  auto a = client();
  auto b = client();
  ASSERT_TRUE(a && b);
  ASSERT_TRUE(a->set("k", std::string("v\0w", 3)).ok());
  auto v = b->get("k", milliseconds(100));
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(*v, std::string("v\0w", 3));
  std::vector<std::string> keys = {"k", "later"};
  auto missing = b->check(keys);
  ASSERT_TRUE(missing.ok());
  EXPECT_FALSE(*missing);
  std::thread setter([&] {
    std::this_thread::sleep_for(milliseconds(100));
    ASSERT_TRUE(a->set("later", "x").ok());
  });
  EXPECT_TRUE(b->wait(keys, milliseconds(2000)).ok());
  setter.join();
}

TEST_F(Store, WaitAndGetTimeOutNamingTheKey) {
  auto a = client();
  ASSERT_TRUE(a);
  const auto start = Clock::now();
  auto v = a->get("never", milliseconds(200));
  EXPECT_TRUE(absl::IsDeadlineExceeded(v.status())) << v.status();
  EXPECT_NE(v.status().message().find("never"), std::string::npos);
  EXPECT_LT(Clock::now() - start, milliseconds(1500));
  std::vector<std::string> keys = {"nope"};
  absl::Status s = a->wait(keys, milliseconds(200));
  EXPECT_TRUE(absl::IsDeadlineExceeded(s)) << s;
  EXPECT_NE(s.message().find("nope"), std::string::npos);
}

TEST_F(Store, HostileFramesCloseOnlyThatConnection) {
  auto good = client();
  ASSERT_TRUE(good && good->set("k", "v").ok());
  for (uint32_t len : {0u, kMaxFrameBytes + 1, 0xffffffffu}) {
    auto fd = connect_tcp("127.0.0.1", server_->port(), Clock::now() + milliseconds(1000));
    ASSERT_TRUE(fd.ok());
    ASSERT_TRUE(send_all(*fd, &len, 4, Clock::now() + milliseconds(1000)).ok());
    char byte;
    EXPECT_FALSE(recv_all(*fd, &byte, 1, Clock::now() + milliseconds(2000)).ok());
    close(*fd);
  }
  // A set whose value length runs past the frame.
  auto fd = connect_tcp("127.0.0.1", server_->port(), Clock::now() + milliseconds(1000));
  ASSERT_TRUE(fd.ok());
  std::string body = std::string(1, '\x01') + std::string("\x01\0\0\0k\xff\0\0\0", 9);
  uint32_t len = body.size();
  ASSERT_TRUE(send_all(*fd, &len, 4, Clock::now() + milliseconds(1000)).ok());
  ASSERT_TRUE(send_all(*fd, body.data(), body.size(), Clock::now() + milliseconds(1000)).ok());
  uint32_t rlen = 0;
  ASSERT_TRUE(recv_all(*fd, &rlen, 4, Clock::now() + milliseconds(2000)).ok());
  ASSERT_EQ(rlen, 1u);
  char code = 0;
  ASSERT_TRUE(recv_all(*fd, &code, 1, Clock::now() + milliseconds(2000)).ok());
  EXPECT_EQ(code, 2);  // bad request, then closed
  EXPECT_FALSE(recv_all(*fd, &code, 1, Clock::now() + milliseconds(2000)).ok());
  close(*fd);
  auto v = good->get("k", milliseconds(100));
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(*v, "v");
}

TEST_F(Store, ClosingWithoutGoodbyeIsDeathAfterItLeaving) {
  auto watcher = client();
  auto clean = client();
  auto dying = client();
  ASSERT_TRUE(watcher && clean && dying);
  ASSERT_TRUE(watcher->hello(0, 3, "w").ok());
  ASSERT_TRUE(clean->hello(1, 3, "host-a, pid 1").ok());
  ASSERT_TRUE(dying->hello(2, 3, "host-b, pid 2").ok());
  ASSERT_TRUE(clean->goodbye().ok());
  clean.reset();
  dying.reset();
  std::vector<RankState> roster;
  for (int i = 0; i < 100; ++i) {
    auto r = watcher->roster();
    ASSERT_TRUE(r.ok()) << r.status();
    roster = *r;
    if (roster.size() == 3 && roster[1].state != RankState::State::kAlive &&
        roster[2].state != RankState::State::kAlive) {
      break;
    }
    std::this_thread::sleep_for(milliseconds(10));
  }
  ASSERT_EQ(roster.size(), 3u);
  EXPECT_EQ(roster[0].state, RankState::State::kAlive);
  EXPECT_EQ(roster[1].rank, 1);
  EXPECT_EQ(roster[1].state, RankState::State::kLeft);  // goodbye first
  EXPECT_EQ(roster[2].rank, 2);
  EXPECT_EQ(roster[2].state, RankState::State::kDied);
  EXPECT_EQ(roster[2].description, "host-b, pid 2");
}

TEST_F(Store, ConflictingRanksAreRefusedNamingTheFirst) {
  auto a = client();
  auto b = client();
  auto c = client();
  ASSERT_TRUE(a && b && c);
  ASSERT_TRUE(a->hello(1, 4, "node0, pid 10").ok());
  absl::Status twice = b->hello(1, 4, "node1, pid 20");
  EXPECT_TRUE(absl::IsInvalidArgument(twice)) << twice;
  EXPECT_NE(twice.message().find("node0, pid 10"), std::string::npos) << twice;
  EXPECT_NE(twice.message().find("RANK"), std::string::npos) << twice;
  absl::Status world = c->hello(2, 8, "node1, pid 30");
  EXPECT_TRUE(absl::IsInvalidArgument(world)) << world;
  EXPECT_NE(world.message().find("WORLD_SIZE=8"), std::string::npos) << world;
  EXPECT_TRUE(absl::IsInvalidArgument(c->hello(4, 4, "node1, pid 30")));
  // A refused hello leaves the connection usable.
  EXPECT_TRUE(c->hello(2, 4, "node1, pid 30").ok());
}

TEST_F(Store, ServerGoneIsUnavailableNamingIt) {
  auto a = client();
  ASSERT_TRUE(a);
  const int port = server_->port();
  server_.reset();
  absl::Status s = a->set("k", "v");
  EXPECT_TRUE(absl::IsUnavailable(s)) << s;
  EXPECT_NE(s.message().find(std::to_string(port)), std::string::npos) << s;
}

TEST(StoreConnect, RetriesUntilTheServerComes) {
  auto port = pick_free_port();
  ASSERT_TRUE(port.ok());
  std::unique_ptr<StoreServer> server;
  std::thread late([&] {
    std::this_thread::sleep_for(milliseconds(300));
    auto s = StoreServer::start("127.0.0.1", *port);
    ASSERT_TRUE(s.ok()) << s.status();
    server = std::move(*s);
  });
  auto c = StoreClient::connect("127.0.0.1", *port, milliseconds(3000));
  late.join();
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_TRUE((*c)->set("k", "v").ok());
}

}  // namespace
}  // namespace strata::dist

// StratadProcess: the stratad binary (STRATA_STRATAD_BINARY) started by a
// test on <dir>/run/stratad.sock with its stderr in <dir>/stratad.log;
// the constructor waits until the socket accepts (10 s at most), stop()
// sends SIGTERM and reaps it (SIGKILL after 10 s, a test failure).
#pragma once

#include <fcntl.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace strata::testing {

class StratadProcess {
 public:
  StratadProcess(const std::filesystem::path& dir, std::vector<std::string> extra = {})
      : socket_((dir / "run" / "stratad.sock").string()), log_((dir / "stratad.log").string()) {
    std::vector<std::string> args = {STRATA_STRATAD_BINARY, "--socket", socket_};
    args.insert(args.end(), extra.begin(), extra.end());
    pid_ = ::fork();
    if (pid_ == 0) {
      const int fd = ::open(log_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      ::dup2(fd, 2);
      std::vector<char*> argv;
      for (auto& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      ::execv(argv[0], argv.data());
      ::_exit(127);
    }
    for (int i = 0; i < 400; ++i) {
      if (can_connect()) return;
      ::usleep(25'000);
    }
    ADD_FAILURE() << "stratad did not come up; log:\n" << log();
  }
  ~StratadProcess() { stop(); }
  int stop() {
    if (pid_ <= 0) return -1;
    ::kill(pid_, SIGTERM);
    int status = 0;
    for (int i = 0; i < 400; ++i) {
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        return status;
      }
      ::usleep(25'000);
    }
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, &status, 0);
    pid_ = -1;
    ADD_FAILURE() << "stratad did not stop on SIGTERM within 10 s";
    return status;
  }
  void kill_hard() {
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, nullptr, 0);
    pid_ = -1;
  }
  bool can_connect() const {
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, socket_.c_str(), sizeof addr.sun_path - 1);
    const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    const bool ok = ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
    ::close(fd);
    return ok;
  }
  bool alive() const { return pid_ > 0 && ::waitpid(pid_, nullptr, WNOHANG) == 0; }
  const std::string& socket() const { return socket_; }
  std::string log() const {
    std::ifstream in(log_);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
  }

 private:
  std::string socket_, log_;
  pid_t pid_ = -1;
};

}  // namespace strata::testing

// Shared by the tests that run the real `strata` binary as a user would: a
// scratch directory per test and a runner that captures the exit code,
// stdout and stderr separately.
#pragma once

#include <stdlib.h>
#include <sys/wait.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace strata::testing {

inline std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// One JSON value per line of `path` (a --log-json file); a line that does not
// parse is a discarded value, which the caller's checks then catch.
inline std::vector<nlohmann::json> json_lines(const std::string& path) {
  std::vector<nlohmann::json> out;
  std::istringstream in(slurp(path));
  for (std::string line; std::getline(in, line);) {
    out.push_back(nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false));
  }
  return out;
}

struct CliRun {
  int exit_code = -1;    // -1 when the shell itself did not exit normally
  bool crashed = false;  // killed by a signal (the shell reports 128 + signal)
  std::string out, err;
};

// A fresh directory under $TMPDIR (or /tmp), removed with everything in it.
class ScratchDir {
 public:
  explicit ScratchDir(const std::string& prefix) {
    const char* tmp = std::getenv("TMPDIR");
    std::string tmpl = std::string(tmp != nullptr && *tmp ? tmp : "/tmp") + "/" + prefix + "XXXXXX";
    if (::mkdtemp(tmpl.data()) != nullptr) path_ = tmpl;
    EXPECT_FALSE(path_.empty()) << "mkdtemp failed for " << tmpl;
  }
  ~ScratchDir() {
    std::error_code ec;
    if (!path_.empty()) std::filesystem::remove_all(path_, ec);
  }
  ScratchDir(const ScratchDir&) = delete;
  ScratchDir& operator=(const ScratchDir&) = delete;

  const std::string& path() const { return path_; }

  // Writes `contents` to path()/name, creating parent directories.
  std::string write(const std::string& name, const std::string& contents) const {
    const std::filesystem::path p = std::filesystem::path(path_) / name;
    std::filesystem::create_directories(p.parent_path());
    std::ofstream(p, std::ios::binary) << contents;
    return p.string();
  }

  // Runs `strata ARGS` through the shell; `shell_prefix` runs first in the
  // same shell (e.g. "ulimit -S -l 64 && ").
  CliRun run_strata(const std::string& args, const std::string& shell_prefix = "") const {
    const std::string out = path_ + "/.stdout", err = path_ + "/.stderr";
    const std::string cmd =
        shell_prefix + "'" + STRATA_STRATA_BINARY + "' " + args + " >'" + out + "' 2>'" + err + "'";
    const int status = std::system(cmd.c_str());
    CliRun r;
    if (WIFEXITED(status)) {
      r.exit_code = WEXITSTATUS(status);
      r.crashed = r.exit_code > 128;
    } else {
      r.crashed = true;
    }
    r.out = slurp(out);
    r.err = slurp(err);
    return r;
  }

 private:
  std::string path_;
};

}  // namespace strata::testing

// The `strata` binary against hostile flag values: every command and flag
// with empty text, ".", "-1", "nan", "inf", "1e99", a huge number, bytes
// that are not UTF-8, 5000 characters, and paths that are a file, a folder,
// a FIFO, /dev/zero or missing. Each run must end within a timeout with
// exit 1 or 2 and exactly one error line on stderr ("strata: error: ..." or
// CLI11's usage line), never a crash, a hang or an "internal error" (the
// guard in tools/main.cc is a net, not the fix).
//
// Values a flag legitimately takes are skipped (a new directory name for
// --save-dir, any text for --prompt), and the base arguments of each command
// make it fail early when a value is accepted, so no case starts real work.
// Every flag `strata CMD --help` lists must be covered here (report's
// --nvme-path has a test of its own: an unusable path is a finding there).
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <map>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/cli_test_util.h"

namespace {

using strata::testing::ScratchDir;
using strata::testing::slurp;

struct Outcome {
  int exit_code = -1;
  bool hung = false;
  bool signalled = false;
  std::string out, err;
};

// Runs the binary with `args` exactly as given (no shell: every byte reaches
// argv), stdin from /dev/null, in `cwd`; killed after `timeout`.
Outcome run_strata(const std::vector<std::string>& args, const std::string& cwd,
                   const std::string& scratch, std::chrono::milliseconds timeout) {
  const std::string out_path = scratch + "/.fuzz_out", err_path = scratch + "/.fuzz_err";
  std::vector<std::string> argv_s = {STRATA_STRATA_BINARY};
  argv_s.insert(argv_s.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (std::string& a : argv_s) argv.push_back(a.data());
  argv.push_back(nullptr);
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::setpgid(0, 0);  // so a timeout kills the whole group
    const int in = ::open("/dev/null", O_RDONLY);
    const int out = ::open(out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    const int err = ::open(err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (in < 0 || out < 0 || err < 0 || ::chdir(cwd.c_str()) != 0) ::_exit(120);
    ::dup2(in, 0);
    ::dup2(out, 1);
    ::dup2(err, 2);
    ::execv(argv[0], argv.data());
    ::_exit(121);
  }
  Outcome o;
  if (pid < 0) return o;
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  int status = 0;
  while (::waitpid(pid, &status, WNOHANG) == 0) {
    if (std::chrono::steady_clock::now() > deadline) {
      ::kill(-pid, SIGKILL);
      ::waitpid(pid, &status, 0);
      o.hung = true;
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  if (!o.hung) {
    if (WIFEXITED(status)) o.exit_code = WEXITSTATUS(status);
    o.signalled = WIFSIGNALED(status);
  }
  o.out = slurp(out_path);
  o.err = slurp(err_path);
  return o;
}

// Empty when `o` is a clean refusal; else what is wrong with it.
std::string judge(const Outcome& o) {
  if (o.hung) return "hung (killed after the timeout)";
  if (o.signalled) return "killed by a signal (crash)";
  if (o.exit_code != 1 && o.exit_code != 2) {
    return "exit code " + std::to_string(o.exit_code) + ", not 1 or 2";
  }
  if (o.err.find("internal error") != std::string::npos) return "an escaped exception";
  std::vector<std::string> errors;
  size_t start = 0;
  while (start < o.err.size()) {
    size_t end = o.err.find('\n', start);
    if (end == std::string::npos) end = o.err.size();
    const std::string line = o.err.substr(start, end - start);
    start = end + 1;
    if (line.rfind("strata: warning: ", 0) == 0) continue;
    if (line == "Run with --help for more information.") continue;  // CLI11's second line
    errors.push_back(line);
  }
  if (errors.size() != 1) return std::to_string(errors.size()) + " error lines, not 1";
  if (o.exit_code == 1 && errors[0].rfind("strata: error: ", 0) != 0) {
    return "exit 1 without a \"strata: error:\" line";
  }
  if (errors[0].empty()) return "an empty error line";
  return "";
}

// What a flag takes, and so which hostile values are legitimate for it.
enum class Kind {
  kNumber,   // a number or size: every hostile value must be refused
  kChoice,   // one of a set of words or names
  kInput,    // a file or folder strata reads
  kOutDir,   // a directory strata creates or writes into: any new name is fine
  kOutFile,  // a file strata writes: any new name is fine
  kText,     // any text is fine (a prompt): not fuzzed
};

struct Flag {
  std::string name;  // "" for the positional argument
  Kind kind;
};

struct Command {
  std::vector<std::string> words;                         // "bench", "io"
  std::vector<std::pair<std::string, std::string>> base;  // flag (or "" positional), value
  std::vector<Flag> flags;
  std::vector<std::string> value_less;  // flags that take no value (--json): not fuzzed
  std::string label;                    // names the command in cases; default: words
};

struct Value {
  std::string label;  // names the case in messages
  std::string text;
  bool path_like_new_name = false;  // a name a new file or directory could have
};

// Cases that fail today in commands owned by other branches (train, sample,
// plan, ckpt): "WORDS FLAG LABEL". Skipped while listed; the list is
// emptied when those fixes merge.
const std::set<std::string> kOwnedElsewhere = {};

class CliFuzzTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string root = scratch_.path();
    cwd_ = root + "/cwd";  // an empty working directory: "." reads nothing
    ::mkdir(cwd_.c_str(), 0700);
    targets_ = root + "/targets";
    ::mkdir(targets_.c_str(), 0700);
    file_ = scratch_.write("targets/file.txt", "hello\n");
    folder_ = targets_ + "/folder";
    ::mkdir(folder_.c_str(), 0700);
    fifo_ = targets_ + "/fifo";
    ASSERT_EQ(::mkfifo(fifo_.c_str(), 0600), 0);
    missing_ = targets_ + "/missing";
    config_ = scratch_.write("base/ds_config.json", R"({
      "train_batch_size": 2, "train_micro_batch_size_per_gpu": 2,
      "zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}},
      "optimizer": {"type": "AdamW", "params": {"lr": 1e-3}}})");
    short_data_ = scratch_.write("base/short.txt", "too short for a sequence\n");
    std::string text;
    for (int i = 0; text.size() < 4096; ++i)
      text += "strata offloads line " + std::to_string(i) + "\n";
    data_ = scratch_.write("base/data.txt", text);
    ckpt_ = root + "/base/ckpt";
    io_dir_ = root + "/base/io";
    ::mkdir(io_dir_.c_str(), 0700);
  }

  std::vector<Value> values() const {
    return {{"empty", ""},
            {"dot", "."},
            {"minus_one", "-1", true},
            {"nan", "nan", true},
            {"inf", "inf", true},
            {"1e99", "1e99", true},
            {"huge", "184467440737095516160000", true},
            {"non_utf8", "\xff\xfe\x80", true},
            {"5000_chars", std::string(5000, 'x')},
            {"file", file_},
            {"folder", folder_},
            {"fifo", fifo_},
            {"dev_zero", "/dev/zero"},
            {"missing", missing_, true}};
  }

  static bool legitimate(Kind kind, const Value& v) {
    switch (kind) {
      case Kind::kText:
        return true;
      // Never /dev/zero as an output: run as root, a save that renames over
      // it would replace the machine's device (the FIFO, in a scratch
      // folder, stands for every special file here).
      case Kind::kOutDir:
        // A new directory under any name, or an existing one.
        return v.path_like_new_name || v.label == "dot" || v.label == "folder" ||
               v.label == "dev_zero";
      case Kind::kOutFile:
        // An existing regular file is replaced: that is what an output is.
        return v.path_like_new_name || v.label == "dev_zero" || v.label == "file";
      default:
        return false;
    }
  }

  // A case that wrongly wrote to a target (replaced the FIFO, filled the
  // folder) must not change what the next case sees.
  void restore_targets() {
    std::error_code ec;
    struct stat st {};
    if (::lstat(fifo_.c_str(), &st) != 0 || !S_ISFIFO(st.st_mode)) {
      std::filesystem::remove_all(fifo_, ec);
      ASSERT_EQ(::mkfifo(fifo_.c_str(), 0600), 0);
    }
    if (!std::filesystem::is_empty(folder_, ec) || ec) {
      std::filesystem::remove_all(folder_, ec);
      std::filesystem::create_directories(folder_, ec);
    }
    if (slurp(file_) != "hello\n" || !std::filesystem::is_regular_file(file_)) {
      std::filesystem::remove_all(file_, ec);
      scratch_.write("targets/file.txt", "hello\n");
    }
    std::filesystem::remove_all(missing_, ec);
  }

  std::vector<Command> commands() const {
    const std::string ckpt_missing = targets_ + "/no_ckpt";
    return {
        {{"config", "check"},
         {},
         {{"", Kind::kInput}, {"--world-size", Kind::kNumber}},
         {"--json"}},
        {{"plan"},
         {{"--model", "gpt2-tiny"}, {"--deepspeed_config", config_}},
         {{"--model", Kind::kChoice},
          {"--deepspeed_config", Kind::kInput},
          {"--gpu-mem", Kind::kNumber},
          {"--host-mem", Kind::kNumber},
          {"--nvme", Kind::kNumber},
          {"--device", Kind::kChoice},
          {"--seq-len", Kind::kNumber},
          {"--vocab-size", Kind::kNumber},
          {"--data", Kind::kInput},
          {"--gpu-tflops", Kind::kNumber},
          {"--pcie-bw", Kind::kNumber},
          {"--nvme-bw", Kind::kNumber},
          {"--cpu-gbps", Kind::kNumber},
          {"--world-size", Kind::kNumber},
          {"--nodes", Kind::kNumber}},
         {"--json", "--checkpoint-activations", "--async-save"}},
        // Too little text: a value that is accepted ends in the data check,
        // before any training.
        {{"train"},
         {{"--model", "gpt2-tiny"}, {"--data", short_data_}, {"--deepspeed_config", config_}},
         {{"--model", Kind::kChoice},
          {"--data", Kind::kInput},
          {"--deepspeed_config", Kind::kInput},
          {"--steps", Kind::kNumber},
          {"--device", Kind::kChoice},
          {"--seq-len", Kind::kNumber},
          {"--gpu-mem", Kind::kNumber},
          {"--eval-every", Kind::kNumber},
          {"--eval-batches", Kind::kNumber},
          {"--log-json", Kind::kOutFile},
          {"--trace", Kind::kOutFile},
          {"--seed", Kind::kNumber},
          {"--plot", Kind::kOutFile},
          {"--sample", Kind::kNumber},
          {"--temperature", Kind::kNumber},
          {"--lr", Kind::kNumber},
          {"--weight-decay", Kind::kNumber},
          {"--save-every", Kind::kNumber},
          {"--save-dir", Kind::kOutDir},
          {"--resume", Kind::kInput},
          {"--init", Kind::kInput},
          {"--nproc", Kind::kNumber},
          {"--comm-timeout", Kind::kNumber},
          {"--daemon", Kind::kInput},
          {"--session", Kind::kChoice}},
         // --vocab and --merges need each other: fuzzed together below.
         {"--async-save", "--checkpoint-activations", "--vocab", "--merges"}},
        // Valid data: the flags train checks only after loading it. Each
        // must be refused before the first step (1 step of gpt2-tiny when not).
        {{"train"},
         {{"--model", "gpt2-tiny"},
          {"--data", data_},
          {"--deepspeed_config", config_},
          {"--steps", "1"},
          {"--seq-len", "16"},
          {"--eval-batches", "1"}},
         {{"--log-json", Kind::kOutFile},
          {"--trace", Kind::kOutFile},
          {"--save-dir", Kind::kOutDir},
          {"--plot", Kind::kOutFile},
          {"--temperature", Kind::kNumber},
          {"--seed", Kind::kNumber},
          {"--sample", Kind::kNumber}},
         {},
         "train(valid data)"},
        {{"sample"},
         {{"--ckpt", ckpt_missing}, {"--prompt", "hi"}},
         {{"--ckpt", Kind::kInput},
          {"--prompt", Kind::kText},
          {"--tokens", Kind::kNumber},
          {"--temperature", Kind::kNumber},
          {"--seed", Kind::kNumber}},
         {}},
        // A real checkpoint (EveryFlag... writes it first): the flags sample
        // and export check after reading it.
        {{"sample"},
         {{"--ckpt", ckpt_}, {"--prompt", "hi"}, {"--tokens", "4"}},
         {{"--tokens", Kind::kNumber}, {"--temperature", Kind::kNumber}, {"--seed", Kind::kNumber}},
         {},
         "sample(valid ckpt)"},
        {{"ckpt", "export"},
         {{"", ckpt_}, {"--to", targets_ + "/out.safetensors"}},
         {{"--to", Kind::kOutFile}, {"--dtype", Kind::kChoice}, {"--names", Kind::kChoice}},
         {"--json"},
         "ckpt export(valid ckpt)"},
        {{"ckpt", "info"}, {}, {{"", Kind::kInput}}, {"--json"}},
        {{"ckpt", "export"},
         {{"", ckpt_missing}, {"--to", targets_ + "/out.safetensors"}},
         {{"", Kind::kInput},
          {"--to", Kind::kOutFile},
          {"--dtype", Kind::kChoice},
          {"--names", Kind::kChoice}},
         {"--json"}},
        {{"bench", "memory"},
         {{"--elements", "65536"}, {"--repeats", "1"}},
         {{"--elements", Kind::kNumber},
          {"--threads", Kind::kNumber},
          {"--repeats", Kind::kNumber}},
         {"--json"}},
        {{"bench", "cpu-adam"},
         {{"--params", "1024"}, {"--repeats", "1"}},
         {{"--params", Kind::kNumber},
          {"--optimizer", Kind::kChoice},
          {"--grad-dtype", Kind::kChoice},
          {"--out-dtype", Kind::kChoice},
          {"--isa", Kind::kChoice},
          {"--threads", Kind::kNumber},
          {"--repeats", Kind::kNumber}},
         {"--json", "--stream-copy-out", "--no-stream-copy-out"}},
        {{"bench", "io"},
         {{"--path", io_dir_}, {"--size", "1M"}, {"--no-fio", ""}},
         {{"--path", Kind::kOutDir},
          {"--block-size", Kind::kNumber},
          {"--queue-depth", Kind::kNumber},
          {"--size", Kind::kNumber},
          {"--mode", Kind::kChoice},
          {"--engine", Kind::kChoice},
          {"--plot", Kind::kOutFile},
          {"--repeats", Kind::kNumber}},
         {"--json", "--sweep", "--sqpoll", "--no-fio"}},
        {{"bench", "store"},
         {{"--layers", "2"}, {"--layer-mb", "0.01"}, {"--steps", "2"}, {"--nvme-path", io_dir_}},
         {{"--layers", Kind::kNumber},
          {"--layer-mb", Kind::kNumber},
          {"--fwd-ms", Kind::kNumber},
          {"--bwd-ms", Kind::kNumber},
          {"--optimizer-ms", Kind::kNumber},
          {"--link-gbps", Kind::kNumber},
          {"--device-layers", Kind::kNumber},
          {"--host-state-layers", Kind::kNumber},
          {"--steps", Kind::kNumber},
          {"--nvme-path", Kind::kOutDir}},
         {"--json"}},
        {{"bench", "step"},
         {{"--model", "gpt2-tiny"}, {"--steps", "2"}, {"--nvme-path", io_dir_}},
         {{"--model", Kind::kChoice},
          {"--width-divisor", Kind::kNumber},
          {"--micro-batch", Kind::kNumber},
          {"--seq-len", Kind::kNumber},
          {"--gas", Kind::kNumber},
          {"--tflops", Kind::kNumber},
          {"--link-gbps", Kind::kNumber},
          {"--offload", Kind::kChoice},
          {"--precision", Kind::kChoice},
          {"--nvme-path", Kind::kOutDir},
          {"--reduce-bucket-size", Kind::kNumber},
          {"--steps", Kind::kNumber},
          {"--threads", Kind::kNumber},
          {"--world-size", Kind::kNumber},
          {"--zero-stage", Kind::kNumber}},
         {"--json", "--no-device-costs"}},
        {{"bench", "pcie"},
         {{"--size", "4096"}, {"--repeats", "1"}},
         {{"--size", Kind::kNumber}, {"--repeats", Kind::kNumber}, {"--gpu", Kind::kNumber}},
         {"--json"}},
        {{"bench", "train"},
         {{"--steps", "2"},
          {"--seq-len", "8"},
          {"--micro-batch", "1"},
          {"--offload", "none"},
          {"--overlap", "sync"}},
         {{"--model", Kind::kChoice},
          {"--steps", Kind::kNumber},
          {"--seq-len", Kind::kNumber},
          {"--micro-batch", Kind::kNumber},
          {"--dtype", Kind::kChoice},
          {"--offload", Kind::kChoice},
          {"--overlap", Kind::kChoice},
          {"--nvme-path", Kind::kOutDir},
          {"--data", Kind::kInput},
          {"--gpu-mem", Kind::kNumber},
          {"--seed", Kind::kNumber}},
         {"--json", "--checkpoint-activations", "--no-fuse"}},
    };
  }

  // Runs one case; records a failure unless it is a clean refusal.
  void check(const std::string& name, const std::vector<std::string>& args) {
    if (kOwnedElsewhere.count(name) != 0) return;
    restore_targets();
    const Outcome o = run_strata(args, cwd_, scratch_.path(), std::chrono::seconds(10));
    ++runs_;
    const std::string why = judge(o);
    if (!why.empty()) {
      ADD_FAILURE() << "strata " << name << ": " << why << "\nstderr: " << o.err.substr(0, 600);
    }
  }

  ScratchDir scratch_{"strata_cli_fuzz_"};
  std::string cwd_, targets_, file_, folder_, fifo_, missing_, config_, short_data_, data_, ckpt_,
      io_dir_;
  int runs_ = 0;
};

std::string joined(const std::vector<std::string>& words) {
  std::string s;
  for (const std::string& w : words) s += (s.empty() ? "" : " ") + w;
  return s;
}

TEST_F(CliFuzzTest, EveryFlagRefusesHostileValuesWithOneErrorLine) {
  const auto start = std::chrono::steady_clock::now();
  const Outcome saved =
      run_strata({"train", "--model", "gpt2-tiny", "--data", data_, "--deepspeed_config", config_,
                  "--steps", "1", "--seq-len", "16", "--eval-batches", "1", "--save-dir", ckpt_},
                 cwd_, scratch_.path(), std::chrono::seconds(60));
  ASSERT_EQ(saved.exit_code, 0) << saved.err;
  for (const Command& cmd : commands()) {
    for (const Flag& flag : cmd.flags) {
      for (const Value& v : values()) {
        if (legitimate(flag.kind, v)) continue;
        std::vector<std::string> args = cmd.words;
        for (const auto& [f, value] : cmd.base) {
          if (f == flag.name) continue;  // the fuzzed flag replaces the base's
          if (!f.empty()) args.push_back(f);
          if (!value.empty()) args.push_back(value);
        }
        // "--flag=VALUE" keeps CLI11 from reading "-1" as a flag.
        args.push_back(flag.name.empty() ? v.text : flag.name + "=" + v.text);
        const std::string name = (cmd.label.empty() ? joined(cmd.words) : cmd.label) + " " +
                                 (flag.name.empty() ? "ARG" : flag.name) + " " + v.label;
        SCOPED_TRACE(name);
        check(name, args);
      }
    }
  }
  // --vocab/--merges need each other, and the global --log-level.
  for (const Value& v : values()) {
    check("train --vocab/--merges " + v.label,
          {"train", "--model", "gpt2-tiny", "--data", short_data_, "--deepspeed_config", config_,
           "--vocab=" + v.text, "--merges=" + v.text});
    check("--log-level " + v.label, {"--log-level=" + v.text, "config", "check", config_});
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("%d runs in %.1f s\n", runs_, seconds);
  EXPECT_GT(runs_, 500);
}

// Every flag a command's --help lists is fuzzed above (or takes no value).
TEST_F(CliFuzzTest, CoversEveryFlagOfEveryCommand) {
  // A command may appear more than once (train, with two bases).
  std::map<std::vector<std::string>, std::set<std::string>> covered_by_command;
  for (const Command& cmd : commands()) {
    std::set<std::string>& covered = covered_by_command[cmd.words];
    covered.insert(cmd.value_less.begin(), cmd.value_less.end());
    covered.insert("--help");
    for (const Flag& f : cmd.flags) covered.insert(f.name);
  }
  for (const auto& [words, covered] : covered_by_command) {
    std::vector<std::string> args = words;
    args.push_back("--help");
    const Outcome o = run_strata(args, cwd_, scratch_.path(), std::chrono::seconds(10));
    ASSERT_EQ(o.exit_code, 0) << joined(words) << ": " << o.err;
    // Flags are "--name" tokens at the start of an option line.
    size_t at = 0;
    while ((at = o.out.find("\n  ", at)) != std::string::npos) {
      at += 3;
      const size_t end = o.out.find_first_of(" \n", at);
      std::string token = o.out.substr(at, end - at);
      if (token.rfind("-h,", 0) == 0) continue;
      token = token.substr(0, token.find('{'));  // "--no-x{false}": CLI11's default mark
      for (size_t comma; (comma = token.find(',')) != std::string::npos;) {
        EXPECT_TRUE(covered.count(token.substr(0, comma)) != 0)
            << joined(words) << " " << token.substr(0, comma) << " is not fuzzed";
        token = token.substr(comma + 1);
      }
      if (token.rfind("--", 0) != 0) continue;  // a positional or a subcommand
      EXPECT_TRUE(covered.count(token) != 0) << joined(words) << " " << token << " is not fuzzed";
    }
  }
}

// Values that parse but make no sense are refused before any work: a link
// of 0 GB/s (or negative, or nan) in bench store, and a bench io pass larger
// than the free space (it wrote until the disk was full).
TEST_F(CliFuzzTest, BenchRefusesImpossibleRatesAndSizes) {
  for (const char* rate : {"0", "-1", "nan", "0.0000001"}) {
    SCOPED_TRACE(rate);
    const Outcome o = run_strata({"bench", "store", std::string("--link-gbps=") + rate}, cwd_,
                                 scratch_.path(), std::chrono::seconds(10));
    EXPECT_EQ(o.exit_code, 2) << o.err;
    EXPECT_NE(o.err.find("--link-gbps"), std::string::npos) << o.err;
  }
  // Parses (1000 TiB), but no file system here has it free.
  Outcome o = run_strata({"bench", "io", "--path", io_dir_, "--size", "1000T", "--no-fio"}, cwd_,
                         scratch_.path(), std::chrono::seconds(10));
  ASSERT_FALSE(o.hung);
  EXPECT_EQ(o.exit_code, 1) << o.err;
  EXPECT_EQ(o.err.rfind("strata: error: --size 1000.0 TiB needs", 0), 0u) << o.err;
  EXPECT_NE(o.err.find("free; use a smaller --size"), std::string::npos) << o.err;
  EXPECT_TRUE(std::filesystem::is_empty(io_dir_)) << "bench io wrote before checking";
  o = run_strata({"bench", "io", "--path", io_dir_, "--size", "9999999T"}, cwd_, scratch_.path(),
                 std::chrono::seconds(10));
  EXPECT_EQ(o.exit_code, 2) << o.err;
  EXPECT_NE(o.err.find("--size '9999999T' is above the maximum"), std::string::npos) << o.err;
}

// `strata report` reports an unusable --nvme-path as a problem (the report
// itself succeeds: its job is to say what is wrong); it still must not hang,
// crash or print anything but one JSON object.
TEST_F(CliFuzzTest, ReportNamesAnUnusableNvmePathAsAProblem) {
  for (const Value& v : values()) {
    if (v.label != "file" && v.label != "fifo" && v.label != "dev_zero" &&
        v.label != "5000_chars") {
      continue;
    }
    SCOPED_TRACE(v.label);
    const Outcome o = run_strata({"report", "--json", "--nvme-path=" + v.text}, cwd_,
                                 scratch_.path(), std::chrono::seconds(10));
    ASSERT_FALSE(o.hung);
    ASSERT_EQ(o.exit_code, 0) << o.err;
    const nlohmann::json j = nlohmann::json::parse(o.out);
    EXPECT_FALSE(j["direct_io"]["ok"].get<bool>()) << j["direct_io"].dump();
  }
}

// --json output is one JSON object even when a path in it is not UTF-8
// (nlohmann's dump threw type_error 316 and the process aborted).
TEST_F(CliFuzzTest, JsonOutputSurvivesNonUtf8Paths) {
  const std::string path =
      scratch_.write("base/\xff\xfe config.json", R"({"train_batch_size": 2})");
  const Outcome o = run_strata({"config", "check", path, "--json"}, cwd_, scratch_.path(),
                               std::chrono::seconds(10));
  ASSERT_EQ(o.exit_code, 0) << o.err;
  EXPECT_NE(o.out.find("\xef\xbf\xbd"), std::string::npos) << o.out;  // U+FFFD
  EXPECT_EQ(o.out.find("\xff"), std::string::npos);
}

}  // namespace

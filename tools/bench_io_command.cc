// strata bench io: sequential NVMe throughput of the swap engine (GB/s,
// IOPS, CPU seconds per GB), beside fio running the same job when fio is
// installed; --sweep covers block sizes 128K..8M x queue depths 1..64.
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "core/parse.h"
#include "swap/io_bench.h"
#include "swap/io_engine.h"
#include "tools/cli_util.h"
#include "tools/commands.h"

namespace strata::tools {
namespace {

using nlohmann::json;
using swap::IoEngineOptions;
using swap::SequentialIoResult;

struct BenchIoArgs {
  std::string path;
  std::string block_size = "1M";
  int queue_depth = 32;
  std::string size;  // default 1G, 256M per point under --sweep
  std::string mode = "both";
  std::string engine = "auto";
  bool sweep = false;
  bool json = false;
  bool sqpoll = false;
  bool no_fio = false;
  int repeats = 1;
  std::string plot;
};

// Refuses a pass the file systems cannot hold, before writing a byte (a
// --size beyond the free space would write until the disk is full). The
// file is striped, so each directory holds its share; a bench file already
// there (reused) counts as free.
absl::Status check_free_space(const std::vector<std::string>& paths, uint64_t size,
                              uint64_t block_size) {
  const uint64_t n = paths.size();
  const uint64_t blocks = (size / block_size + n - 1) / n;  // per directory, rounded up
  const uint64_t share = blocks * block_size;
  for (const std::string& dir : paths) {
    struct statvfs st {};
    if (::statvfs(dir.c_str(), &st) != 0) continue;  // missing: the engine names it
    uint64_t free_bytes = static_cast<uint64_t>(st.f_bavail) * st.f_frsize;
    struct stat old {};
    if (::stat((std::filesystem::path(dir) / "strata-bench-io.dat").c_str(), &old) == 0 &&
        S_ISREG(old.st_mode)) {
      free_bytes += static_cast<uint64_t>(old.st_size);
    }
    if (share > free_bytes) {
      return absl::FailedPreconditionError(absl::StrCat(
          "--size ", format_bytes(static_cast<double>(size)), " needs ",
          format_bytes(static_cast<double>(share)), " in ", dir, ", which has ",
          format_bytes(static_cast<double>(free_bytes)), " free; use a smaller --size"));
    }
  }
  return absl::OkStatus();
}

std::string size_arg(uint64_t b) {
  if (b % (uint64_t{1} << 30) == 0) return absl::StrCat(b >> 30, "G");
  if (b % (uint64_t{1} << 20) == 0) return absl::StrCat(b >> 20, "M");
  if (b % 1024 == 0) return absl::StrCat(b >> 10, "K");
  return absl::StrCat(b);
}

// fio with the same job on the same file(s); nullopt when fio is missing.
struct FioResult {
  double gb_per_s = 0;
  double iops = 0;
  double cpu_s_per_gb = 0;
};

absl::StatusOr<std::optional<FioResult>> run_fio(const std::vector<std::string>& files,
                                                 uint64_t block_size, int queue_depth,
                                                 uint64_t size, bool write) {
  if (::access("/usr/bin/fio", X_OK) != 0 && std::system("command -v fio >/dev/null 2>&1") != 0) {
    return std::optional<FioResult>();
  }
  std::string cmd =
      absl::StrCat("fio --name=strata-bench-io --filename=", absl::StrJoin(files, ":"),
                   " --ioengine=io_uring --direct=1 --rw=", write ? "write" : "read",
                   " --bs=", block_size, " --iodepth=", queue_depth, " --size=", size,
                   " --numjobs=1 --group_reporting --output-format=json 2>&1");
  FILE* p = ::popen(cmd.c_str(), "r");
  if (p == nullptr) return absl::InternalError(absl::StrCat("could not run: ", cmd));
  std::string out;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), p)) > 0) out.append(buf, n);
  int rc = ::pclose(p);
  const size_t brace = out.find('{');
  if (rc != 0 || brace == std::string::npos) {
    return absl::InternalError(absl::StrCat("fio failed (", cmd, "): ", out.substr(0, 400)));
  }
  json j = json::parse(out.substr(brace), nullptr, false);
  if (j.is_discarded() || !j.contains("jobs") || j["jobs"].empty()) {
    return absl::InternalError(absl::StrCat("could not parse fio output of: ", cmd));
  }
  const json& job = j["jobs"][0];
  const json& side = job[write ? "write" : "read"];
  FioResult r;
  const double bytes = side.value("io_bytes", 0.0);
  const double runtime_s = side.value("runtime", 0.0) / 1e3;
  r.gb_per_s = side.value("bw_bytes", 0.0) / 1e9;
  r.iops = side.value("iops", 0.0);
  const double cpu_s = (job.value("usr_cpu", 0.0) + job.value("sys_cpu", 0.0)) / 100.0 *
                       job.value("job_runtime", runtime_s * 1e3) / 1e3;
  r.cpu_s_per_gb = bytes > 0 ? cpu_s / (bytes / 1e9) : 0;
  return std::optional<FioResult>(r);
}

json result_json(const SequentialIoResult& r) {
  return {{"gb_per_s", r.gb_per_s},       {"iops", r.iops},
          {"seconds", r.seconds},         {"bytes", r.bytes},
          {"cpu_seconds", r.cpu_seconds}, {"cpu_s_per_gb", r.cpu_s_per_gb}};
}

struct Point {
  uint64_t block_size = 0;
  int queue_depth = 0;
  std::optional<SequentialIoResult> write, read;
  std::optional<FioResult> fio_write, fio_read;
};

template <typename T>
void keep_best(std::optional<T>& best, const std::optional<T>& r) {
  if (r && (!best || r->gb_per_s > best->gb_per_s)) best = r;
}

absl::StatusOr<Point> measure_once(IoEngineOptions options, uint64_t size, bool do_write,
                                   bool do_read, bool with_fio,
                                   swap::SequentialIoReport* report_out) {
  Point pt;
  pt.block_size = options.block_size;
  pt.queue_depth = options.queue_depth;
  auto report = swap::run_sequential_io(options, size, do_write, do_read);
  if (!report.ok()) return report.status();
  pt.write = report->write;
  pt.read = report->read;
  if (with_fio) {
    const uint64_t rounded = size - size % options.block_size;
    if (do_write) {
      auto f = run_fio(report->files, options.block_size, options.queue_depth, rounded, true);
      if (!f.ok()) return f.status();
      pt.fio_write = *f;
    }
    if (do_read) {
      auto f = run_fio(report->files, options.block_size, options.queue_depth, rounded, false);
      if (!f.ok()) return f.status();
      pt.fio_read = *f;
    }
  }
  if (report_out) *report_out = std::move(*report);
  return pt;
}

// Best of `repeats`, ours and fio's alternating so both see the same noise.
absl::StatusOr<Point> measure(IoEngineOptions options, uint64_t size, bool do_write, bool do_read,
                              bool with_fio, int repeats, swap::SequentialIoReport* report_out) {
  Point best;
  for (int i = 0; i < repeats; ++i) {
    auto p = measure_once(options, size, do_write, do_read, with_fio, report_out);
    if (!p.ok()) return p.status();
    best.block_size = p->block_size;
    best.queue_depth = p->queue_depth;
    keep_best(best.write, p->write);
    keep_best(best.read, p->read);
    keep_best(best.fio_write, p->fio_write);
    keep_best(best.fio_read, p->fio_read);
  }
  return best;
}

json point_json(const Point& p) {
  json j = {{"block_size", p.block_size}, {"queue_depth", p.queue_depth}};
  if (p.write) j["write"] = result_json(*p.write);
  if (p.read) j["read"] = result_json(*p.read);
  if (p.fio_write || p.fio_read) {
    json fio = json::object();
    json ratio = json::object();
    if (p.fio_write) {
      fio["write"] = {{"gb_per_s", p.fio_write->gb_per_s},
                      {"iops", p.fio_write->iops},
                      {"cpu_s_per_gb", p.fio_write->cpu_s_per_gb}};
      if (p.write && p.fio_write->gb_per_s > 0)
        ratio["write"] = p.write->gb_per_s / p.fio_write->gb_per_s;
    }
    if (p.fio_read) {
      fio["read"] = {{"gb_per_s", p.fio_read->gb_per_s},
                     {"iops", p.fio_read->iops},
                     {"cpu_s_per_gb", p.fio_read->cpu_s_per_gb}};
      if (p.read && p.fio_read->gb_per_s > 0)
        ratio["read"] = p.read->gb_per_s / p.fio_read->gb_per_s;
    }
    j["fio"] = fio;
    j["ratio_to_fio"] = ratio;
  }
  return j;
}

void print_point(const Point& p) {
  auto line = [](const char* what, const SequentialIoResult& r,
                 const std::optional<FioResult>& fio) {
    std::string cmp;
    if (fio) {
      cmp = absl::StrFormat("   fio %7.3f GB/s %8.0f IOPS %6.3f CPU s/GB   ratio %.3f",
                            fio->gb_per_s, fio->iops, fio->cpu_s_per_gb,
                            fio->gb_per_s > 0 ? r.gb_per_s / fio->gb_per_s : 0.0);
    }
    std::fprintf(stderr, "  %-5s %7.3f GB/s %8.0f IOPS %6.3f CPU s/GB%s\n", what, r.gb_per_s,
                 r.iops, r.cpu_s_per_gb, cmp.c_str());
  };
  if (p.write) line("write", *p.write, p.fio_write);
  if (p.read) line("read", *p.read, p.fio_read);
}

absl::Status write_plot(const std::vector<Point>& points, const std::string& png) {
  if (std::system("command -v gnuplot >/dev/null 2>&1") != 0) {
    return absl::FailedPreconditionError(
        "--plot needs gnuplot (apt-get install gnuplot-nox); the table above has the same data");
  }
  const std::string dat = png + ".dat";
  {
    std::ofstream out(dat);
    int last_qd = -1;
    for (const Point& p : points) {
      if (last_qd != -1 && p.queue_depth != last_qd) out << "\n\n";
      last_qd = p.queue_depth;
      out << p.block_size / 1024 << " " << p.queue_depth << " " << (p.write ? p.write->gb_per_s : 0)
          << " " << (p.read ? p.read->gb_per_s : 0) << "\n";
    }
  }
  const std::string script = absl::StrCat(
      "set terminal png size 1200,500; set output '", png,
      "'; set logscale x 2; set xlabel 'block size (KiB)'; set ylabel 'GB/s'; set key left; "
      "set multiplot layout 1,2; set title 'write'; plot for [i=0:*] '",
      dat,
      "' index i using 1:3 with linespoints title columnhead(2); set title 'read'; plot for "
      "[i=0:*] '",
      dat, "' index i using 1:4 with linespoints notitle; unset multiplot");
  std::string cmd = absl::StrCat("gnuplot -e \"", script, "\"");
  if (std::system(cmd.c_str()) != 0) return absl::InternalError("gnuplot failed");
  return absl::OkStatus();
}

int run(const BenchIoArgs& a) {
  IoEngineOptions options;
  options.paths = swap::split_paths(a.path);
  // Bad flag values are usage errors: exit 2.
  auto usage = [](const absl::Status& s) { return report_status(s) == 0 ? 0 : 2; };
  if (options.paths.empty()) return usage(absl::InvalidArgumentError("--path is empty"));
  auto bs = parse_byte_size(a.block_size, "--block-size");
  if (!bs.ok()) return usage(bs.status());
  auto size = parse_byte_size(a.size.empty() ? (a.sweep ? "256M" : "1G") : a.size, "--size");
  if (!size.ok()) return usage(size.status());
  auto kind = swap::parse_io_engine_kind(a.engine);
  if (!kind.ok()) return usage(kind.status());
  if (!a.plot.empty() && !a.sweep) return usage(absl::InvalidArgumentError("--plot needs --sweep"));
  options.kind = *kind;
  options.block_size = *bs;
  options.queue_depth = a.queue_depth;
  options.use_sqpoll = a.sqpoll;
  if (!a.sweep) {
    if (absl::Status s = swap::validate(options); !s.ok()) return usage(s);
  }
  // A sweep's largest point is max(size, 8M).
  const uint64_t largest = a.sweep ? std::max<uint64_t>(*size, 8 << 20) : *size;
  if (absl::Status s =
          check_free_space(options.paths, largest, a.sweep ? 128 << 10 : options.block_size);
      !s.ok()) {
    return report_status(s);
  }
  const bool do_write = a.mode != "read";
  const bool do_read = a.mode != "write";
  const bool with_fio = !a.no_fio;

  std::vector<Point> points;
  swap::SequentialIoReport report;
  if (!a.sweep) {
    auto p = measure(options, *size, do_write, do_read, with_fio, a.repeats, &report);
    if (!p.ok()) {
      swap::remove_bench_files(options);
      return report_status(p.status());
    }
    points.push_back(*p);
  } else {
    if (!a.json) {
      std::fprintf(stderr, "%-8s %4s %10s %10s %10s %10s\n", "bs", "qd", "write GB/s", "read GB/s",
                   "fio write", "fio read");
    }
    for (int qd : {1, 2, 4, 8, 16, 32, 64}) {
      for (uint64_t b = 128 << 10; b <= (8 << 20); b *= 2) {
        options.block_size = b;
        options.queue_depth = qd;
        auto p = measure(options, std::max<uint64_t>(*size, b), do_write, do_read, with_fio,
                         a.repeats, &report);
        if (!p.ok()) {
          swap::remove_bench_files(options);
          return report_status(p.status());
        }
        points.push_back(*p);
        if (!a.json) {
          std::fprintf(stderr, "%-8s %4d %10.3f %10.3f %10.3f %10.3f\n", size_arg(b).c_str(), qd,
                       p->write ? p->write->gb_per_s : 0.0, p->read ? p->read->gb_per_s : 0.0,
                       p->fio_write ? p->fio_write->gb_per_s : 0.0,
                       p->fio_read ? p->fio_read->gb_per_s : 0.0);
        }
      }
    }
  }
  swap::remove_bench_files(options);

  if (a.json) {
    json out = {{"engine", report.engine}, {"reason", report.reason}, {"paths", options.paths},
                {"direct", report.direct}, {"size", *size},           {"mode", a.mode}};
    if (a.sweep) {
      json arr = json::array();
      for (const Point& p : points) arr.push_back(point_json(p));
      out["sweep"] = arr;
    } else {
      out.update(point_json(points.front()));
    }
    if (with_fio && !points.front().fio_write && !points.front().fio_read) out["fio"] = nullptr;
    print_json(out);
  } else if (!a.sweep) {
    std::fprintf(stderr, "strata bench io: %s (%s), %s, block %s, queue depth %d, %s%s\n",
                 report.engine.c_str(), report.reason.c_str(),
                 absl::StrJoin(report.files, ",").c_str(), format_bytes(*bs).c_str(), a.queue_depth,
                 format_bytes(static_cast<double>(*size)).c_str(),
                 report.direct ? ", O_DIRECT" : ", buffered");
    print_point(points.front());
    if (with_fio && !points.front().fio_write && !points.front().fio_read) {
      std::fprintf(stderr, "  (fio not installed: no comparison)\n");
    }
  }
  if (!a.plot.empty()) {
    return report_status(write_plot(points, a.plot));
  }
  return 0;
}

}  // namespace

void add_bench_io_command(CLI::App& bench, int* exit_code) {
  auto* cmd = bench.add_subcommand(
      "io", "NVMe throughput of the swap engine (sequential read/write), compared with fio");
  auto a = std::make_shared<BenchIoArgs>();
  cmd->add_option("--path", a->path, "directory, or comma-separated directories to stripe over")
      ->required();
  cmd->add_option("--block-size", a->block_size, "request size, e.g. 128K, 1M (default 1M)");
  cmd->add_option("--queue-depth", a->queue_depth, "requests in flight per path (default 32)")
      ->check(CLI::Range(1, 4096));
  cmd->add_option("--size", a->size, "bytes per pass (default 1G; 256M per point with --sweep)");
  cmd->add_option("--mode", a->mode, "read|write|both (default both)")
      ->check(CLI::IsMember({"read", "write", "both"}));
  cmd->add_option("--engine", a->engine, "uring|threads|auto (default auto)")
      ->check(CLI::IsMember({"uring", "threads", "auto"}));
  cmd->add_flag("--sweep", a->sweep, "block sizes 128K..8M x queue depths 1..64");
  cmd->add_option("--plot", a->plot, "with --sweep: write throughput curves to this PNG (gnuplot)");
  cmd->add_flag("--sqpoll", a->sqpoll, "io_uring kernel submission polling thread");
  cmd->add_option("--repeats", a->repeats, "runs per point; the best is reported (default 1)")
      ->check(CLI::Range(1, 100));
  cmd->add_flag("--no-fio", a->no_fio, "skip the fio comparison");
  cmd->add_flag("--json", a->json, "print one JSON object on stdout");
  cmd->callback([=] { *exit_code = run(*a); });
}

}  // namespace strata::tools

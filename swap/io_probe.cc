#include "swap/io_probe.h"

#include <fcntl.h>
#include <liburing.h>
#include <limits.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <iterator>
#include <memory>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/file_util.h"
#include "core/status.h"

namespace strata::swap {
namespace {

constexpr size_t kTestBytes = 4096;
constexpr size_t kRegisteredBytes = 64 * 1024;
constexpr int kCompletionTimeoutSeconds = 5;

struct FreeDeleter {
  void operator()(void* p) const { std::free(p); }
};
using AlignedBuffer = std::unique_ptr<char, FreeDeleter>;

AlignedBuffer aligned_buffer(size_t alignment, size_t bytes) {
  void* p = nullptr;
  if (posix_memalign(&p, alignment, bytes) != 0) return nullptr;
  return AlignedBuffer(static_cast<char*>(p));
}

void fill_pattern(char* p, size_t n, unsigned seed) {
  for (size_t i = 0; i < n; ++i) p[i] = static_cast<char>((i * 131 + seed) & 0xff);
}

class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  int get() const { return fd_; }

 private:
  int fd_;
};

// Creates and immediately unlinks a file in `dir`; -errno on failure. The
// name never lingers, so a crashed probe leaves nothing behind.
int create_unlinked(const std::string& dir, int extra_flags) {
  std::string name = absl::StrCat(dir, "/.strata-probe-XXXXXX");
  int fd = mkostemp(name.data(), O_CLOEXEC | extra_flags);
  if (fd < 0) return -errno;
  ::unlink(name.c_str());
  return fd;
}

std::string errno_text(int err) {
  return absl::StrCat(strerrordesc_np(err), " (", strerrorname_np(err), ")");
}

int read_int_file(const std::string& path, int fallback) {
  absl::StatusOr<std::string> s = read_file(path);
  if (!s.ok()) return fallback;
  return std::atoi(s->c_str());
}

std::string explain_setup_error(int err, int disabled) {
  const std::string fallback = "; strata falls back to its thread-pool engine (--engine threads)";
  switch (err) {
    case ENOSYS:
      return "the kernel has no io_uring (io_uring_setup: ENOSYS; built without CONFIG_IO_URING "
             "or older than 5.1)" +
             fallback;
    case EPERM:
    case EACCES:
      if (disabled == 2) {
        return "io_uring is switched off by sysctl kernel.io_uring_disabled=2; set it to 0 "
               "(sysctl -w kernel.io_uring_disabled=0)" +
               fallback;
      }
      if (disabled == 1) {
        return "kernel.io_uring_disabled=1 allows io_uring only to root and to members of "
               "kernel.io_uring_group; add this user's group there or set the sysctl to 0" +
               fallback;
      }
      return absl::StrCat("io_uring_setup was refused (", strerrorname_np(err),
                          "), most likely by a seccomp filter: Docker's default profile blocks "
                          "io_uring; run with --security-opt seccomp=<profile allowing "
                          "io_uring_setup/enter/register>",
                          fallback);
    case ENOMEM:
      return "io_uring_setup: ENOMEM; kernels before 5.12 charge ring memory to RLIMIT_MEMLOCK, "
             "raise it with `ulimit -l unlimited`" +
             fallback;
    default:
      return absl::StrCat("io_uring_setup failed: ", errno_text(err), fallback);
  }
}

// Submits the prepared SQE and waits (bounded) for its completion; returns
// cqe->res, -ETIME when the kernel did not answer in time.
int submit_one(io_uring* ring) {
  int ret = io_uring_submit(ring);
  if (ret < 0) return ret;
  if (ret != 1) return -EIO;
  io_uring_cqe* cqe = nullptr;
  __kernel_timespec ts{kCompletionTimeoutSeconds, 0};
  do {
    ret = io_uring_wait_cqe_timeout(ring, &cqe, &ts);
  } while (ret == -EINTR);
  if (ret < 0) return ret;
  int res = cqe->res;
  io_uring_cqe_seen(ring, cqe);
  return res;
}

// One write, fsync and read through the ring; "" on success, else what failed.
std::string ring_io_test(io_uring* ring, bool plain_rw, const std::string& dir) {
  int fd_or_err = create_unlinked(dir, 0);
  if (fd_or_err < 0) {
    return absl::StrCat("cannot create a test file in ", dir, ": ", errno_text(-fd_or_err));
  }
  Fd fd(fd_or_err);
  AlignedBuffer out = aligned_buffer(4096, kTestBytes);
  AlignedBuffer in = aligned_buffer(4096, kTestBytes);
  STRATA_CHECK(out != nullptr && in != nullptr);
  fill_pattern(out.get(), kTestBytes, 7);
  std::memset(in.get(), 0, kTestBytes);
  iovec out_iov{out.get(), kTestBytes};
  iovec in_iov{in.get(), kTestBytes};

  struct Step {
    const char* what;
    int expect;
  };
  auto run = [&](const Step& step) -> std::string {
    int res = submit_one(ring);
    if (res == -ETIME) {
      // The request may still be in flight and own the buffers.
      out.release();
      in.release();
      return absl::StrCat(step.what, " did not complete within ", kCompletionTimeoutSeconds,
                          " s on ", dir);
    }
    if (res < 0) return absl::StrCat(step.what, " on ", dir, " failed: ", errno_text(-res));
    if (res != step.expect) {
      return absl::StrCat(step.what, " on ", dir, " transferred ", res, " of ", step.expect,
                          " bytes");
    }
    return "";
  };

  io_uring_sqe* sqe = io_uring_get_sqe(ring);
  if (plain_rw) {
    io_uring_prep_write(sqe, fd.get(), out.get(), kTestBytes, 0);
  } else {
    io_uring_prep_writev(sqe, fd.get(), &out_iov, 1, 0);
  }
  if (std::string e = run({"write", static_cast<int>(kTestBytes)}); !e.empty()) return e;

  io_uring_prep_fsync(io_uring_get_sqe(ring), fd.get(), 0);
  if (std::string e = run({"fsync", 0}); !e.empty()) return e;

  sqe = io_uring_get_sqe(ring);
  if (plain_rw) {
    io_uring_prep_read(sqe, fd.get(), in.get(), kTestBytes, 0);
  } else {
    io_uring_prep_readv(sqe, fd.get(), &in_iov, 1, 0);
  }
  if (std::string e = run({"read", static_cast<int>(kTestBytes)}); !e.empty()) return e;
  if (std::memcmp(out.get(), in.get(), kTestBytes) != 0) {
    return absl::StrCat("read through io_uring on ", dir, " returned different bytes than written");
  }
  return "";
}

struct RingGuard {
  io_uring* ring;
  ~RingGuard() { io_uring_queue_exit(ring); }
};

// The block device behind st_dev, if sysfs knows it (not for tmpfs, overlayfs,
// btrfs subvolumes, NFS: those have anonymous device numbers).
void probe_block_device(dev_t dev, DirectIoProbe* out) {
  const std::string sys = absl::StrFormat("/sys/dev/block/%u:%u", major(dev), minor(dev));
  out->device = absl::StrFormat("%u:%u", major(dev), minor(dev));
  char resolved[PATH_MAX];
  if (realpath(sys.c_str(), resolved) == nullptr) return;
  std::string real(resolved);
  out->device = real.substr(real.rfind('/') + 1);
  // A partition has no queue/ of its own; its parent disk has.
  for (const std::string& queue : {real + "/queue", real + "/../queue"}) {
    absl::StatusOr<std::string> logical = read_file(queue + "/logical_block_size");
    if (!logical.ok()) continue;
    out->logical_block_size = std::strtoull(logical->c_str(), nullptr, 10);
    absl::StatusOr<std::string> physical = read_file(queue + "/physical_block_size");
    if (physical.ok()) out->physical_block_size = std::strtoull(physical->c_str(), nullptr, 10);
    return;
  }
}

void direct_io_test(const std::string& dir, DirectIoProbe* out) {
  int fd_or_err = create_unlinked(dir, O_DIRECT);
  if (fd_or_err < 0) {
    out->why_not = absl::StrCat("the ", out->filesystem, " filesystem at ", dir,
                                " refuses O_DIRECT opens: ", errno_text(-fd_or_err),
                                "; put the swap directory on a local ext4 or xfs filesystem");
    return;
  }
  Fd fd(fd_or_err);
  const uint64_t align =
      std::max<uint64_t>({4096, out->logical_block_size, out->physical_block_size});
  out->alignment = align;
  AlignedBuffer wbuf = aligned_buffer(align, align);
  AlignedBuffer rbuf = aligned_buffer(align, align);
  STRATA_CHECK(wbuf != nullptr && rbuf != nullptr);
  fill_pattern(wbuf.get(), align, 3);
  std::memset(rbuf.get(), 0, align);
  ssize_t w;
  do {
    w = ::pwrite(fd.get(), wbuf.get(), align, 0);
  } while (w < 0 && errno == EINTR);
  if (w != static_cast<ssize_t>(align)) {
    out->why_not = w < 0 ? absl::StrCat("an aligned O_DIRECT write of ", align, " bytes to ", dir,
                                        " failed: ", errno_text(errno))
                         : absl::StrCat("short O_DIRECT write to ", dir, ": ", w, " of ", align);
    return;
  }
  ssize_t r;
  do {
    r = ::pread(fd.get(), rbuf.get(), align, 0);
  } while (r < 0 && errno == EINTR);
  if (r != static_cast<ssize_t>(align)) {
    out->why_not = r < 0 ? absl::StrCat("an aligned O_DIRECT read of ", align, " bytes from ", dir,
                                        " failed: ", errno_text(errno))
                         : absl::StrCat("short O_DIRECT read from ", dir, ": ", r, " of ", align);
    return;
  }
  if (std::memcmp(wbuf.get(), rbuf.get(), align) != 0) {
    out->why_not =
        absl::StrCat("O_DIRECT read from ", dir, " returned different bytes than written");
    return;
  }
  out->o_direct_ok = true;
}

}  // namespace

bool IoUringProbe::supports(const std::string& opcode) const {
  for (const auto& [name, ok] : opcodes) {
    if (name == opcode) return ok;
  }
  return false;
}

std::vector<std::string> io_uring_feature_names(uint32_t bits) {
  // IORING_FEAT_* bit positions are kernel ABI; newer ones are named here
  // even when the installed liburing headers predate them.
  static constexpr const char* kNames[] = {
      "SINGLE_MMAP", "NODROP",      "SUBMIT_STABLE",   "RW_CUR_POS",   "CUR_PERSONALITY",
      "FAST_POLL",   "POLL_32BITS", "SQPOLL_NONFIXED", "EXT_ARG",      "NATIVE_WORKERS",
      "RSRC_TAGS",   "CQE_SKIP",    "LINKED_FILE",     "REG_REG_RING", "RECVSEND_BUNDLE",
      "MIN_TIMEOUT", "RW_ATTR",     "NO_IOWAIT"};
  static_assert(IORING_FEAT_LINKED_FILE == 1u << 12, "IORING_FEAT bit layout changed");
  std::vector<std::string> out;
  for (uint32_t i = 0; i < 32; ++i) {
    if (!(bits & (1u << i))) continue;
    out.push_back(i < std::size(kNames) ? kNames[i] : absl::StrCat("bit ", i));
  }
  return out;
}

IoUringProbe probe_io_uring(const std::string& test_dir) {
  IoUringProbe p;
  p.test_dir = test_dir;
  p.io_uring_disabled = read_int_file("/proc/sys/kernel/io_uring_disabled", -1);

  io_uring ring;
  io_uring_params params;
  std::memset(&params, 0, sizeof params);
  int ret = io_uring_queue_init_params(8, &ring, &params);
  if (ret < 0) {
    p.setup_errno = -ret;
    p.why_not = explain_setup_error(-ret, p.io_uring_disabled);
    return p;
  }
  RingGuard guard{&ring};
  p.ring_ok = true;
  p.feature_bits = params.features;
  p.features = io_uring_feature_names(params.features);

  if (io_uring_probe* probe = io_uring_get_probe_ring(&ring); probe != nullptr) {
    const std::pair<const char*, int> ops[] = {{"READV", IORING_OP_READV},
                                               {"WRITEV", IORING_OP_WRITEV},
                                               {"READ", IORING_OP_READ},
                                               {"WRITE", IORING_OP_WRITE},
                                               {"READ_FIXED", IORING_OP_READ_FIXED},
                                               {"WRITE_FIXED", IORING_OP_WRITE_FIXED},
                                               {"FSYNC", IORING_OP_FSYNC},
                                               {"FALLOCATE", IORING_OP_FALLOCATE}};
    for (const auto& [name, op] : ops) {
      p.opcodes.emplace_back(name, io_uring_opcode_supported(probe, op) != 0);
    }
    io_uring_free_probe(probe);
  }

  // Registered (fixed) buffers are what the engine wants for DMA without
  // per-request page pinning; they are charged to RLIMIT_MEMLOCK.
  AlignedBuffer reg = aligned_buffer(4096, kRegisteredBytes);
  STRATA_CHECK(reg != nullptr);
  iovec reg_iov{reg.get(), kRegisteredBytes};
  ret = io_uring_register_buffers(&ring, &reg_iov, 1);
  if (ret == 0) {
    p.registered_buffers_ok = true;
    io_uring_unregister_buffers(&ring);
  } else {
    p.registered_buffers_error =
        absl::StrCat("registering a 64 KiB buffer failed: ", errno_text(-ret),
                     -ret == ENOMEM ? " (RLIMIT_MEMLOCK too low: raise it with ulimit -l)" : "");
  }

  // Without a probe (kernels before 5.6) assume only the vectored opcodes.
  const bool plain_rw = p.supports("READ") && p.supports("WRITE");
  std::string err = ring_io_test(&ring, plain_rw, test_dir);
  if (err.empty()) {
    p.io_test_ok = true;
  } else {
    p.why_not =
        absl::StrCat(err, "; strata falls back to its thread-pool engine (--engine threads)");
  }
  return p;
}

std::string filesystem_name(uint64_t magic) {
  switch (magic) {
    case 0xEF53:
      return "ext4";  // ext2/3/4 share one magic
    case 0x58465342:
      return "xfs";
    case 0x9123683E:
      return "btrfs";
    case 0x01021994:
      return "tmpfs";
    case 0x858458F6:
      return "ramfs";
    case 0x794C7630:
      return "overlayfs";
    case 0x6969:
      return "nfs";
    case 0x2FC12FC1:
      return "zfs";
    case 0xF2F52010:
      return "f2fs";
    case 0xCA451A4E:
      return "bcachefs";
    case 0x65735546:
      return "fuse";
    case 0x01021997:
      return "9p";
    case 0x00C36400:
      return "ceph";
    case 0xFE534D42:
      return "smb2";
    case 0xFF534D42:
      return "cifs";
    case 0x0BD00BD0:
      return "lustre";
    case 0x47504653:
      return "gpfs";
    case 0x4D44:
      return "vfat";
    case 0x2011BAB0:
      return "exfat";
    case 0x73717368:
      return "squashfs";
    default:
      return absl::StrFormat("unknown (0x%x)", magic);
  }
}

absl::StatusOr<DirectIoProbe> probe_direct_io(const std::string& dir) {
  DirectIoProbe p;
  p.path = dir;
  struct stat st;
  if (::stat(dir.c_str(), &st) != 0) {
    int err = errno;
    absl::Status s = errno_status(err, dir);
    if (err != ENOENT) return s;
    return absl::Status(s.code(), absl::StrCat(s.message(),
                                               "; create it, or pass an existing "
                                               "directory on the NVMe drive"));
  }
  if (!S_ISDIR(st.st_mode)) {
    return absl::InvalidArgumentError(
        absl::StrCat(dir, " is not a directory; pass a directory on the NVMe drive"));
  }
  struct statfs fs;
  if (::statfs(dir.c_str(), &fs) != 0) {
    return errno_status(errno, absl::StrCat("statfs ", dir));
  }
  p.fs_magic = static_cast<uint64_t>(fs.f_type) & 0xffffffffu;
  p.filesystem = filesystem_name(p.fs_magic);
  const uint64_t frag = fs.f_frsize != 0 ? fs.f_frsize : fs.f_bsize;
  p.total_bytes = static_cast<uint64_t>(fs.f_blocks) * frag;
  p.free_bytes = static_cast<uint64_t>(fs.f_bavail) * frag;
  p.fs_block_size = fs.f_bsize;
  probe_block_device(st.st_dev, &p);

  // A directory no file can be created in is unusable, not merely slow.
  int fd = create_unlinked(dir, 0);
  if (fd < 0) {
    return errno_status(-fd, absl::StrCat("cannot create a file in ", dir));
  }
  ::close(fd);
  direct_io_test(dir, &p);
  return p;
}

}  // namespace strata::swap

#include "swap/io_probe.h"

#include <dirent.h>
#include <fcntl.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <bit>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "gtest/gtest.h"

namespace strata::swap {
namespace {

// A fresh empty directory, removed (with nothing left in it) at the end.
class ScratchDir {
 public:
  ScratchDir() {
    const char* tmp = std::getenv("TMPDIR");
    std::string tmpl = std::string(tmp != nullptr && *tmp ? tmp : "/tmp") + "/io_probe_test.XXXXXX";
    path_ = mkdtemp(tmpl.data()) != nullptr ? tmpl : "";
  }
  ~ScratchDir() {
    if (!path_.empty()) ::rmdir(path_.c_str());
  }
  const std::string& path() const { return path_; }

  int entries() const {
    DIR* d = opendir(path_.c_str());
    if (d == nullptr) return -1;
    int n = 0;
    while (dirent* e = readdir(d)) {
      std::string name = e->d_name;
      if (name != "." && name != "..") ++n;
    }
    closedir(d);
    return n;
  }

 private:
  std::string path_;
};

TEST(IoUringProbeTest, RingWorksOrSaysWhy) {
  ScratchDir dir;
  ASSERT_FALSE(dir.path().empty());
  IoUringProbe p = probe_io_uring(dir.path());
  EXPECT_EQ(p.test_dir, dir.path());
  if (!p.ring_ok) {
    EXPECT_NE(p.setup_errno, 0);
    EXPECT_FALSE(p.why_not.empty());
    GTEST_SKIP() << "io_uring unavailable here: " << p.why_not;
  }
  EXPECT_EQ(p.setup_errno, 0);
  EXPECT_EQ(p.features.size(), static_cast<size_t>(std::popcount(p.feature_bits)));
  if (!p.opcodes.empty()) {
    ASSERT_EQ(p.opcodes.size(), 8u);
    EXPECT_TRUE(p.supports("READV"));
    EXPECT_TRUE(p.supports("WRITEV"));
    EXPECT_TRUE(p.supports("FSYNC"));
    EXPECT_FALSE(p.supports("NO_SUCH_OP"));
  }
  EXPECT_TRUE(p.io_test_ok) << p.why_not;
  EXPECT_TRUE(p.works());
  EXPECT_TRUE(p.why_not.empty()) << p.why_not;
  if (!p.registered_buffers_ok) {
    EXPECT_FALSE(p.registered_buffers_error.empty());
  }
  EXPECT_EQ(dir.entries(), 0) << "the probe left a file behind";
}

TEST(IoUringProbeTest, MissingDirectoryFailsTheIoTestNamingIt) {
  IoUringProbe p = probe_io_uring("/nonexistent/strata-io-probe");
  if (!p.ring_ok) GTEST_SKIP() << "io_uring unavailable here: " << p.why_not;
  EXPECT_FALSE(p.io_test_ok);
  EXPECT_FALSE(p.works());
  EXPECT_NE(p.why_not.find("/nonexistent/strata-io-probe"), std::string::npos) << p.why_not;
  EXPECT_NE(p.why_not.find("ENOENT"), std::string::npos) << p.why_not;
}

// Runs `body` in a forked child (so seccomp filters and lowered limits stay
// there) and returns its exit code; the child reports failures on stderr.
template <typename Body>
int in_child(Body body) {
  fflush(nullptr);
  pid_t pid = fork();
  if (pid == 0) _exit(body());
  int status = 0;
  waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128;
}

bool block_io_uring_setup_with_seccomp() {
  sock_filter filter[] = {
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, nr)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_io_uring_setup, 0, 1),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (EPERM & SECCOMP_RET_DATA)),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
  };
  sock_fprog prog{static_cast<unsigned short>(std::size(filter)), filter};
  return prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0 &&
         prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) == 0;
}

TEST(IoUringProbeTest, SeccompRefusalIsExplained) {
  int rc = in_child([] {
    if (!block_io_uring_setup_with_seccomp()) return 77;
    IoUringProbe p = probe_io_uring("/tmp");
    if (p.ring_ok || p.works() || p.setup_errno != EPERM) return 1;
    const char* want = p.io_uring_disabled > 0 ? "io_uring_disabled" : "seccomp";
    if (p.why_not.find(want) == std::string::npos) {
      std::fprintf(stderr, "why_not lacks '%s': %s\n", want, p.why_not.c_str());
      return 2;
    }
    return p.why_not.find("--engine threads") == std::string::npos ? 3 : 0;
  });
  if (rc == 77) GTEST_SKIP() << "cannot install a seccomp filter here";
  EXPECT_EQ(rc, 0);
}

// Registered buffers are charged to RLIMIT_MEMLOCK unless the process holds
// CAP_IPC_LOCK, so the child drops that capability before lowering the limit.
TEST(IoUringProbeTest, LowMemlockFailsBufferRegistration) {
  if (!probe_io_uring("/tmp").ring_ok) GTEST_SKIP() << "io_uring unavailable here";
  int rc = in_child([] {
    __user_cap_header_struct hdr{_LINUX_CAPABILITY_VERSION_3, 0};
    __user_cap_data_struct data[2] = {};
    if (syscall(SYS_capget, &hdr, data) != 0) return 77;
    data[CAP_IPC_LOCK / 32].effective &= ~(1u << (CAP_IPC_LOCK % 32));
    if (syscall(SYS_capset, &hdr, data) != 0) return 77;
    rlimit rl{16 * 1024, 16 * 1024};
    if (setrlimit(RLIMIT_MEMLOCK, &rl) != 0) return 77;
    IoUringProbe p = probe_io_uring("/tmp");
    if (!p.ring_ok) return 77;  // old kernels charge the ring itself to the limit
    if (p.registered_buffers_ok) return 1;
    if (p.registered_buffers_error.find("ulimit -l") == std::string::npos) {
      std::fprintf(stderr, "registered_buffers_error: %s\n", p.registered_buffers_error.c_str());
      return 2;
    }
    // The ring itself still works without registered buffers.
    return p.io_test_ok ? 0 : 3;
  });
  if (rc == 77) GTEST_SKIP() << "cannot drop CAP_IPC_LOCK or lower RLIMIT_MEMLOCK here";
  EXPECT_EQ(rc, 0);
}

TEST(IoUringProbeTest, FeatureNames) {
  EXPECT_TRUE(io_uring_feature_names(0).empty());
  EXPECT_EQ(io_uring_feature_names(0b101),
            (std::vector<std::string>{"SINGLE_MMAP", "SUBMIT_STABLE"}));
  EXPECT_EQ(io_uring_feature_names(1u << 8), std::vector<std::string>{"EXT_ARG"});
  EXPECT_EQ(io_uring_feature_names(1u << 10), std::vector<std::string>{"RSRC_TAGS"});
  EXPECT_EQ(io_uring_feature_names(1u << 31), std::vector<std::string>{"bit 31"});
}

TEST(DirectIoProbeTest, ScratchDirectory) {
  ScratchDir dir;
  ASSERT_FALSE(dir.path().empty());
  absl::StatusOr<DirectIoProbe> p = probe_direct_io(dir.path());
  ASSERT_TRUE(p.ok()) << p.status();
  struct statfs fs;
  ASSERT_EQ(statfs(dir.path().c_str(), &fs), 0);
  EXPECT_EQ(p->path, dir.path());
  EXPECT_EQ(p->fs_magic, static_cast<uint64_t>(fs.f_type) & 0xffffffffu);
  EXPECT_EQ(p->filesystem, filesystem_name(p->fs_magic));
  EXPECT_GT(p->total_bytes, 0u);
  EXPECT_LE(p->free_bytes, p->total_bytes);
  EXPECT_EQ(p->fs_block_size, static_cast<uint64_t>(fs.f_bsize));
  EXPECT_FALSE(p->device.empty());
  if (p->logical_block_size != 0) {
    EXPECT_EQ(p->logical_block_size & (p->logical_block_size - 1), 0u);  // a power of two
    EXPECT_GE(p->physical_block_size, p->logical_block_size);
  }
  if (p->o_direct_ok) {
    EXPECT_GE(p->alignment, 4096u);
    EXPECT_GE(p->alignment, p->logical_block_size);
    EXPECT_TRUE(p->why_not.empty());
  } else {
    EXPECT_NE(p->why_not.find(dir.path()), std::string::npos) << p->why_not;
  }
  EXPECT_EQ(dir.entries(), 0) << "the probe left a file behind";
}

TEST(DirectIoProbeTest, OdirectMatchesAPlainOpen) {
  ScratchDir dir;
  absl::StatusOr<DirectIoProbe> p = probe_direct_io(dir.path());
  ASSERT_TRUE(p.ok()) << p.status();
  std::string file = dir.path() + "/direct";
  int fd = ::open(file.c_str(), O_CREAT | O_RDWR | O_DIRECT, 0600);
  if (fd >= 0) ::close(fd);
  ::unlink(file.c_str());
  // A filesystem that refuses O_DIRECT opens cannot pass the probe.
  if (fd < 0) {
    EXPECT_FALSE(p->o_direct_ok);
  }
}

TEST(DirectIoProbeTest, TmpfsIsNamed) {
  struct statfs fs;
  if (statfs("/dev/shm", &fs) != 0 || fs.f_type != 0x01021994) {
    GTEST_SKIP() << "/dev/shm is not a tmpfs here";
  }
  absl::StatusOr<DirectIoProbe> p = probe_direct_io("/dev/shm");
  if (!p.ok()) GTEST_SKIP() << p.status();
  EXPECT_EQ(p->filesystem, "tmpfs");
  EXPECT_EQ(p->logical_block_size, 0u);  // no block device behind it
}

TEST(DirectIoProbeTest, MissingPathIsAnErrorNamingIt) {
  absl::StatusOr<DirectIoProbe> p = probe_direct_io("/nonexistent/strata-nvme");
  ASSERT_FALSE(p.ok());
  EXPECT_EQ(p.status().code(), absl::StatusCode::kNotFound) << p.status();
  EXPECT_NE(std::string(p.status().message()).find("/nonexistent/strata-nvme"), std::string::npos);
}

TEST(DirectIoProbeTest, FileIsNotADirectory) {
  ScratchDir dir;
  std::string file = dir.path() + "/plain";
  int fd = ::open(file.c_str(), O_CREAT | O_WRONLY, 0600);
  ASSERT_GE(fd, 0);
  ::close(fd);
  absl::StatusOr<DirectIoProbe> p = probe_direct_io(file);
  ::unlink(file.c_str());
  ASSERT_FALSE(p.ok());
  EXPECT_EQ(p.status().code(), absl::StatusCode::kInvalidArgument) << p.status();
  EXPECT_NE(std::string(p.status().message()).find("not a directory"), std::string::npos);
}

TEST(DirectIoProbeTest, ReadOnlyDirectoryIsAnError) {
  ScratchDir dir;
  ASSERT_EQ(chmod(dir.path().c_str(), 0500), 0);
  // Root ignores permissions; the child gives up that override first.
  const std::string path = dir.path();
  int rc = in_child([&path] {
    __user_cap_header_struct hdr{_LINUX_CAPABILITY_VERSION_3, 0};
    __user_cap_data_struct data[2] = {};
    if (syscall(SYS_capget, &hdr, data) != 0) return 77;
    data[0].effective &= ~(1u << CAP_DAC_OVERRIDE);
    if (syscall(SYS_capset, &hdr, data) != 0) return 77;
    absl::StatusOr<DirectIoProbe> p = probe_direct_io(path);
    if (p.ok()) return 1;
    if (std::string(p.status().message()).find(path) == std::string::npos) {
      std::fprintf(stderr, "error does not name %s: %s\n", path.c_str(),
                   std::string(p.status().message()).c_str());
      return 2;
    }
    return 0;
  });
  chmod(dir.path().c_str(), 0700);
  if (rc == 77) GTEST_SKIP() << "cannot drop CAP_DAC_OVERRIDE here";
  EXPECT_EQ(rc, 0);
}

TEST(FilesystemNameTest, KnownMagics) {
  EXPECT_EQ(filesystem_name(0xEF53), "ext4");
  EXPECT_EQ(filesystem_name(0x58465342), "xfs");
  EXPECT_EQ(filesystem_name(0x9123683E), "btrfs");
  EXPECT_EQ(filesystem_name(0x01021994), "tmpfs");
  EXPECT_EQ(filesystem_name(0x794C7630), "overlayfs");
  EXPECT_EQ(filesystem_name(0x1234), "unknown (0x1234)");
}

}  // namespace
}  // namespace strata::swap

#include "core/file_util.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>

#include "absl/strings/str_cat.h"
#include "core/status.h"

namespace strata {

absl::StatusOr<std::string> read_file(const std::string& path, uint64_t max_bytes) {
  // O_NONBLOCK: opening a FIFO with no writer would otherwise hang here.
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) return errno_status(errno, absl::StrCat("cannot open ", path));
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    int err = errno;
    ::close(fd);
    return errno_status(err, absl::StrCat("cannot stat ", path));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return absl::InvalidArgumentError(
        absl::StrCat(path, S_ISDIR(st.st_mode) ? " is a directory" : " is not a regular file",
                     " (a FIFO, socket or device); expected a file"));
  }
  if (static_cast<uint64_t>(st.st_size) > max_bytes) {
    ::close(fd);
    return absl::InvalidArgumentError(absl::StrCat(path, " is ", st.st_size,
                                                   " bytes, more than the ", max_bytes,
                                                   " this reader accepts; is it the right file?"));
  }
  std::string out;
  char buf[1 << 16];
  for (;;) {
    ssize_t r = ::read(fd, buf, sizeof buf);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) {
      int err = errno;
      ::close(fd);
      return errno_status(err, absl::StrCat("cannot read ", path));
    }
    if (r == 0) break;
    // Files in /proc and /sys report size 0 and may grow while read.
    if (out.size() + static_cast<uint64_t>(r) > max_bytes) {
      ::close(fd);
      return absl::InvalidArgumentError(
          absl::StrCat(path, " grew past the ", max_bytes, " bytes this reader accepts"));
    }
    out.append(buf, static_cast<size_t>(r));
  }
  ::close(fd);
  return out;
}

absl::Status write_file_atomic(const std::string& path, std::string_view contents) {
  const std::string tmp = path + ".tmp";
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return errno_status(errno, absl::StrCat("cannot create ", tmp));
  size_t done = 0;
  while (done < contents.size()) {
    ssize_t w = ::write(fd, contents.data() + done, contents.size() - done);
    if (w < 0 && errno == EINTR) continue;
    if (w < 0) {
      int err = errno;
      ::close(fd);
      ::unlink(tmp.c_str());
      return errno_status(err, absl::StrCat("cannot write ", tmp));
    }
    done += static_cast<size_t>(w);
  }
  if (::fsync(fd) != 0) {
    int err = errno;
    ::close(fd);
    ::unlink(tmp.c_str());
    return errno_status(err, absl::StrCat("cannot fsync ", tmp));
  }
  ::close(fd);
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    int err = errno;
    ::unlink(tmp.c_str());
    return errno_status(err, absl::StrCat("cannot rename ", tmp, " to ", path));
  }
  return absl::OkStatus();
}

absl::Status pwrite_all(int fd, const void* data, uint64_t bytes, uint64_t offset,
                        const std::string& path) {
  const auto* p = static_cast<const uint8_t*>(data);
  uint64_t done = 0;
  while (done < bytes) {
    const ssize_t w = ::pwrite(fd, p + done, bytes - done, static_cast<off_t>(offset + done));
    if (w < 0 && errno == EINTR) continue;
    if (w < 0) return errno_status(errno, absl::StrCat("cannot write ", path));
    done += static_cast<uint64_t>(w);
  }
  return absl::OkStatus();
}

absl::Status pread_all(int fd, void* data, uint64_t bytes, uint64_t offset,
                       const std::string& path) {
  auto* p = static_cast<uint8_t*>(data);
  uint64_t done = 0;
  while (done < bytes) {
    const ssize_t r = ::pread(fd, p + done, bytes - done, static_cast<off_t>(offset + done));
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return errno_status(errno, absl::StrCat("cannot read ", path));
    if (r == 0) {
      return absl::DataLossError(absl::StrCat(path, " is truncated: ", offset + bytes,
                                              " bytes expected, ", offset + done, " found"));
    }
    done += static_cast<uint64_t>(r);
  }
  return absl::OkStatus();
}

}  // namespace strata

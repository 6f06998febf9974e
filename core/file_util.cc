#include "core/file_util.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "core/status.h"

namespace strata {

absl::StatusOr<OpenedFile> open_regular_file(const std::string& path) {
  // O_NONBLOCK: opening a FIFO with no writer would otherwise hang here
  // (regular files ignore the flag).
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) return errno_status(errno, absl::StrCat("cannot open ", path));
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    return errno_status(err, absl::StrCat("cannot stat ", path));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return absl::InvalidArgumentError(
        absl::StrCat(path,
                     S_ISDIR(st.st_mode) ? " is a directory, not a regular file"
                                         : " is not a regular file (a FIFO, socket or device)",
                     "; expected a file"));
  }
  return OpenedFile{fd, static_cast<uint64_t>(st.st_size)};
}

absl::StatusOr<std::string> read_file(const std::string& path, uint64_t max_bytes) {
  STRATA_ASSIGN_OR_RETURN(const OpenedFile f, open_regular_file(path));
  const int fd = f.fd;
  if (f.size > max_bytes) {
    ::close(fd);
    return absl::InvalidArgumentError(absl::StrCat(path, " is ", f.size, " bytes, more than the ",
                                                   max_bytes,
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

absl::Status check_output_path(const std::string& path) {
  struct stat st;
  if (::lstat(path.c_str(), &st) != 0) {
    if (errno == ENOENT) return absl::OkStatus();
    return errno_status(errno, absl::StrCat("cannot inspect ", path));
  }
  if (S_ISREG(st.st_mode)) return absl::OkStatus();
  const char* what = S_ISLNK(st.st_mode)                          ? "a symbolic link"
                     : S_ISDIR(st.st_mode)                        ? "a directory"
                     : S_ISFIFO(st.st_mode)                       ? "a FIFO"
                     : S_ISSOCK(st.st_mode)                       ? "a socket"
                     : S_ISCHR(st.st_mode) || S_ISBLK(st.st_mode) ? "a device"
                                                                  : "not a regular file";
  return absl::FailedPreconditionError(
      absl::StrCat(path, " is ", what,
                   "; strata writes only to a regular file or a new path, which it replaces as a "
                   "whole; name a file instead"));
}

absl::Status check_output_destination(const std::string& path, absl::string_view what,
                                      bool is_dir) {
  auto refuse = [&](const std::string& why) {
    return absl::FailedPreconditionError(absl::StrCat(what, " ", path, ": ", why));
  };
  if (path.empty()) return refuse("the path is empty; name a file");
  struct stat st {};
  if (::stat(path.c_str(), &st) == 0) {
    if (is_dir && !S_ISDIR(st.st_mode)) {
      return refuse("exists and is not a folder; choose a new path or a folder");
    }
    if (!is_dir && S_ISDIR(st.st_mode)) return refuse("is a folder; name a file");
    // A FIFO would block the open until a reader comes; a device or socket
    // would be replaced by a rename-over write (--trace) or fed a log.
    if (!is_dir) STRATA_RETURN_IF_ERROR(check_output_path(path), std::string(what));
    // Checked once more below through the folder it is replaced in.
    if (is_dir && ::access(path.c_str(), W_OK | X_OK) != 0) {
      return refuse(absl::StrCat("cannot write into it (", std::strerror(errno), ")"));
    }
  } else if (errno != ENOENT) {
    // ENOTDIR: a file stands where a folder of the path should be.
    return refuse(absl::StrCat("cannot be created (", std::strerror(errno),
                               "); check every folder of the path"));
  }
  // A checkpoint's missing folders are created on save (the nearest
  // existing one must be writable); a file's folder must be there.
  std::filesystem::path parent = std::filesystem::path(path).parent_path();
  while (is_dir && !parent.empty() && ::stat(parent.c_str(), &st) != 0 && errno == ENOENT) {
    parent = parent.parent_path();
  }
  const std::string folder = parent.empty() ? std::string(".") : parent.string();
  if (::stat(folder.c_str(), &st) != 0) {
    return refuse(absl::StrCat(folder, " does not exist (", std::strerror(errno),
                               "); create the folder or choose another path"));
  }
  if (!S_ISDIR(st.st_mode)) {
    return refuse(absl::StrCat(folder, " is not a folder; choose another path"));
  }
  if (::access(folder.c_str(), W_OK | X_OK) != 0) {
    return refuse(absl::StrCat("cannot write into ", folder, " (", std::strerror(errno),
                               "); choose another path"));
  }
  return absl::OkStatus();
}

absl::Status check_output_is_not_input(const std::string& output,
                                       const std::vector<std::string>& inputs) {
  struct stat out;
  if (::stat(output.c_str(), &out) != 0) return absl::OkStatus();
  for (const std::string& in : inputs) {
    struct stat st;
    if (::stat(in.c_str(), &st) == 0 && st.st_dev == out.st_dev && st.st_ino == out.st_ino) {
      return absl::FailedPreconditionError(
          absl::StrCat(output, " is ", in,
                       ", an input of this command; writing it would destroy what is read: "
                       "write the output somewhere else"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<int> create_new_file(const std::string& path) {
  for (int attempt = 0;; ++attempt) {
    const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
    if (fd >= 0) return fd;
    const int err = errno;
    struct stat st;
    // A regular file left by a crashed writer of the same name is stale.
    if (err == EEXIST && attempt == 0 && ::lstat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode) &&
        ::unlink(path.c_str()) == 0) {
      continue;
    }
    if (err == EEXIST) STRATA_RETURN_IF_ERROR(check_output_path(path));
    return errno_status(err, absl::StrCat("cannot create ", path));
  }
}

absl::Status write_file_atomic(const std::string& path, std::string_view contents) {
  STRATA_RETURN_IF_ERROR(check_output_path(path));
  static std::atomic<uint64_t> counter{0};
  const std::string tmp = absl::StrCat(path, ".tmp-", ::getpid(), "-", counter++);
  STRATA_ASSIGN_OR_RETURN(const int fd, create_new_file(tmp));
  auto fail = [&](int err, const std::string& what) {
    ::close(fd);
    ::unlink(tmp.c_str());
    return errno_status(err, absl::StrCat(what, tmp));
  };
  size_t done = 0;
  while (done < contents.size()) {
    ssize_t w = ::write(fd, contents.data() + done, contents.size() - done);
    if (w < 0 && errno == EINTR) continue;
    if (w < 0) return fail(errno, "cannot write ");
    done += static_cast<size_t>(w);
  }
  if (::fsync(fd) != 0) return fail(errno, "cannot fsync ");
  ::close(fd);
  // Again: the check above may be minutes old for a large file.
  if (absl::Status s = check_output_path(path); !s.ok()) {
    ::unlink(tmp.c_str());
    return s;
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    int err = errno;
    ::unlink(tmp.c_str());
    return errno_status(err, absl::StrCat("cannot rename ", tmp, " to ", path));
  }
  return absl::OkStatus();
}

std::string strip_trailing_slashes(std::string path) {
  while (path.size() > 1 && path.back() == '/') path.pop_back();
  return path;
}

std::string parent_dir(const std::string& path) {
  const std::filesystem::path parent = std::filesystem::path(path).parent_path();
  return parent.empty() ? std::string(".") : parent.string();
}

absl::StatusOr<std::vector<std::string>> list_directory(const std::string& dir) {
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) return errno_status(errno, absl::StrCat("cannot list ", dir));
  std::vector<std::string> names;
  for (;;) {
    errno = 0;
    const dirent* e = ::readdir(d);
    if (e == nullptr) break;
    const std::string name = e->d_name;
    if (name != "." && name != "..") names.push_back(name);
  }
  const int err = errno;
  ::closedir(d);
  if (err != 0) return errno_status(err, absl::StrCat("cannot list ", dir));
  return names;
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

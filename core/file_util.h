// Whole-file helpers with errors a user can act on (they name the path).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace strata {

// A regular file opened for reading: fd (O_RDONLY | O_CLOEXEC, the caller
// closes it) and its size when opened.
struct OpenedFile {
  int fd = -1;
  uint64_t size = 0;
};

// Opens `path` for reading only if it is a regular file, and never blocks:
// a FIFO is opened non-blocking and then refused. The errno status names the
// path (NotFound when missing); a directory, FIFO, socket or device is
// InvalidArgument "PATH is not a regular file (...)".
absl::StatusOr<OpenedFile> open_regular_file(const std::string& path);

// Largest file read_file reads whole unless told otherwise: a config, a
// meta.json or a vocabulary is far smaller; anything larger is streamed.
inline constexpr uint64_t kMaxWholeFileBytes = uint64_t{256} << 20;

// Reads a whole regular file of at most `max_bytes`. NotFound names the path;
// a directory, FIFO, socket or device (/dev/zero, a pipe that would block
// forever) is InvalidArgument, and so is a file larger than `max_bytes`
// (the message gives both sizes). Never blocks on a FIFO: it is opened
// non-blocking and refused.
absl::StatusOr<std::string> read_file(const std::string& path,
                                      uint64_t max_bytes = kMaxWholeFileBytes);

// Writes `contents` to a new path.tmp-<pid>-<n>, fsyncs it and renames it over
// `path`, so a crash leaves either the old file or the new one, never a torn
// one. Only a regular file is replaced (check_output_path, before writing and
// again before the rename).
absl::Status write_file_atomic(const std::string& path, std::string_view contents);

// Whether an output written by rename-over may go to `path`: OK when nothing
// is there or a regular file is. A symlink, directory, FIFO, socket or device
// (/dev/null) is FailedPrecondition naming the path and what it is: renaming
// over it would replace it, not write through it.
absl::Status check_output_path(const std::string& path);

// Whether `path` can be created or replaced as a file (is_dir false) or a
// folder (is_dir true) before any work is done: a file's folder exists and
// is writable; for a folder the nearest existing one above it is writable
// (the others are created on save); an existing path is of the right kind
// (a file destination must be a regular file: never a FIFO, which would
// block, nor a device or socket). FailedPrecondition
// naming `what` (a flag) and the path; "-" is not special. Cannot foresee a full disk.
absl::Status check_output_destination(const std::string& path, absl::string_view what, bool is_dir);

// FailedPrecondition when `output` is the same file as one of `inputs`
// (device and inode, after following symlinks): writing it would destroy what
// is being read. Paths that do not exist match nothing.
absl::Status check_output_is_not_input(const std::string& output,
                                       const std::vector<std::string>& inputs);

// Creates a new regular file for writing, never following a symlink at
// `path` nor reusing anything but a regular file left there (replaced).
// Returns the fd (O_WRONLY | O_CLOEXEC, mode 0644 before the umask).
absl::StatusOr<int> create_new_file(const std::string& path);

// `path` without trailing slashes ("ck/" -> "ck"; "/" stays "/").
std::string strip_trailing_slashes(std::string path);

// The folder `path` is in: its parent path, or "." for a bare name.
std::string parent_dir(const std::string& path);

// The names in directory `dir` (not "." or ".."), in no particular order;
// the errno status naming `dir` when it cannot be listed.
absl::StatusOr<std::vector<std::string>> list_directory(const std::string& dir);

// pwrite / pread of exactly `bytes` at `offset` of an open file, resuming
// short transfers and EINTR. Errors name `path` (the file behind fd); a read
// past the end is DataLoss saying the file is truncated.
absl::Status pwrite_all(int fd, const void* data, uint64_t bytes, uint64_t offset,
                        const std::string& path);
absl::Status pread_all(int fd, void* data, uint64_t bytes, uint64_t offset,
                       const std::string& path);

}  // namespace strata

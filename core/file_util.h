// Whole-file helpers with errors a user can act on (they name the path).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace strata {

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

// Writes `contents` to path.tmp, fsyncs it and renames it over `path`, so a
// crash leaves either the old file or the new one, never a torn one.
absl::Status write_file_atomic(const std::string& path, std::string_view contents);

// pwrite / pread of exactly `bytes` at `offset` of an open file, resuming
// short transfers and EINTR. Errors name `path` (the file behind fd); a read
// past the end is DataLoss saying the file is truncated.
absl::Status pwrite_all(int fd, const void* data, uint64_t bytes, uint64_t offset,
                        const std::string& path);
absl::Status pread_all(int fd, void* data, uint64_t bytes, uint64_t offset,
                       const std::string& path);

}  // namespace strata

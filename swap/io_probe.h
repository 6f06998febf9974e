// Probes of what the swap tier can use on this machine: io_uring (is it
// there, which features and opcodes, does a real write+fsync+read work) and
// O_DIRECT on a given directory (filesystem, free space, block sizes, does an
// aligned write+read work).
//
// Both probes do real I/O on a small unlinked temporary file (a few KiB) in
// the directory they are given, so they test the path the engine will use,
// and leave nothing behind. Findings (no io_uring, O_DIRECT refused) are
// reported in the structs with a reason a user can act on; only a directory
// that cannot be used at all is an error. Safe to call from any thread; each
// call sets up and tears down its own ring.
//
//   swap::IoUringProbe u = swap::probe_io_uring("/nvme/strata");
//   if (!u.works()) log::warn("io_uring: {}; using the thread engine", u.why_not);
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"

namespace strata::swap {

struct IoUringProbe {
  bool ring_ok = false;               // io_uring_queue_init_params succeeded
  int setup_errno = 0;                // errno of the failed setup, 0 when ring_ok
  int io_uring_disabled = -1;         // kernel.io_uring_disabled sysctl; -1 when absent
  uint32_t feature_bits = 0;          // io_uring_params.features as the kernel returned it
  std::vector<std::string> features;  // names of the set bits: "SINGLE_MMAP", ...
  std::vector<std::pair<std::string, bool>> opcodes;  // "READ" -> supported, ...
  bool registered_buffers_ok = false;                 // io_uring_register_buffers of 64 KiB worked
  std::string registered_buffers_error;
  std::string test_dir;     // where the write+fsync+read ran
  bool io_test_ok = false;  // write + fsync + read through the ring returned the data
  std::string why_not;      // set when !works(): what failed and what to do

  bool works() const { return ring_ok && io_test_ok; }
  bool supports(const std::string& opcode) const;
};

// Sets up a ring and runs the I/O test in `test_dir` (an existing directory).
IoUringProbe probe_io_uring(const std::string& test_dir);

struct DirectIoProbe {
  std::string path;        // as given
  std::string filesystem;  // "ext4", "xfs", "tmpfs", ..., or "unknown (0x...)"
  uint64_t fs_magic = 0;   // statfs f_type
  uint64_t total_bytes = 0;
  uint64_t free_bytes = 0;          // available to this (unprivileged) user
  uint64_t fs_block_size = 0;       // statfs f_bsize
  std::string device;               // block device name ("nvme0n1p1"), "MAJ:MIN" if unnamed
  uint64_t logical_block_size = 0;  // of the device; 0 when not a block device
  uint64_t physical_block_size = 0;
  bool o_direct_ok = false;  // an aligned O_DIRECT write + read returned the data
  uint64_t alignment = 0;    // the alignment and size that test used
  std::string why_not;       // set when !o_direct_ok
};

// Errors: the path does not exist, is not a directory, or a file cannot be
// created in it (the message names the path and the errno).
absl::StatusOr<DirectIoProbe> probe_direct_io(const std::string& dir);

// "ext4" for EXT4_SUPER_MAGIC etc.; "unknown (0x1234)" otherwise.
std::string filesystem_name(uint64_t magic);

// Names of the set IORING_FEAT_* bits, "bit N" for ones newer than this list.
std::vector<std::string> io_uring_feature_names(uint32_t bits);

}  // namespace strata::swap

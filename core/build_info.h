// How this binary was built, for `strata report` and bug reports.
#pragma once

#include <string_view>

namespace strata {

struct BuildInfo {
  std::string_view version;
  std::string_view git_revision;
  std::string_view build_type;
  std::string_view compiler;
  std::string_view cxx_flags;
  bool cuda;                    // CUDA device layer compiled in
  std::string_view cuda_archs;  // e.g. "90;120"; empty without CUDA
  std::string_view cuda_compiler_version;
  bool sanitizers;
};

const BuildInfo& build_info();

}  // namespace strata

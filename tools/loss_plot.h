// The loss-curve PNG of `strata train --plot FILE.png`, drawn by gnuplot:
// training loss per step as a line, validation loss as points. The data is
// piped to gnuplot's stdin (no temporary files); gnuplot writes the PNG.
//
// prepare_loss_plot() is meant to run before any training, so a missing tool
// or output folder is reported before the work rather than after it.
// Errors: FailedPrecondition naming gnuplot and how to install it, or the
// folder that is missing or not writable; Internal when gnuplot fails (its
// own message goes to stderr). Not thread-safe (spawns a process).
//
//   STRATA_ASSIGN_OR_RETURN(std::string gnuplot, prepare_loss_plot("loss.png"));
//   ... train ...
//   STRATA_RETURN_IF_ERROR(write_loss_plot(gnuplot, curve, "loss.png"));
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace strata::tools {

struct LossCurve {
  std::string title;
  std::vector<std::pair<int64_t, double>> train;  // (step, loss)
  std::vector<std::pair<int64_t, double>> val;    // (step, validation loss)
};

inline constexpr int kLossPlotWidth = 960;  // pixels
inline constexpr int kLossPlotHeight = 540;

// The path of an executable "gnuplot" on $PATH, once the folder of
// `png_path` is known to be writable.
absl::StatusOr<std::string> prepare_loss_plot(const std::string& png_path);

// Draws `curve` into `png_path` (kLossPlotWidth x kLossPlotHeight).
absl::Status write_loss_plot(const std::string& gnuplot, const LossCurve& curve,
                             const std::string& png_path);

}  // namespace strata::tools
